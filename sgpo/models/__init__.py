"""Models built locally: the tiny kit (a small causal LM and its tokenizer)."""
