"""What several test modules share: fake LLM back-ends, the cluster doc walk, GGUF writers, ports."""
