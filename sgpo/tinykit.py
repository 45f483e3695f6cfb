"""The tiny kit: a small Qwen2-style causal LM and byte-level BPE tokenizer, built locally.

Built deterministically (same data + config -> same files) so the tiny preset, tests and
benchmarks need no model hub. head_dim = hidden_size / num_attention_heads = 64, which vLLM's
CPU and GPU attention kernels accept, so the same checkpoint can be served by vLLM.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgpo.config import TinyModelConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
# ChatML, as in Qwen2; `{% generation %}` markers let TRL compute assistant-only masks.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_texts(paths: Iterable[Path]) -> list[str]:
    """All strings in the given JSONL files (any nesting), in file order: the BPE training corpus."""
    out: list[str] = []

    def walk(obj: object) -> None:
        if isinstance(obj, str):
            out.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                walk(json.loads(line))
    return out


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, cfg: "TinyModelConfig", texts: list[str]) -> Path:
    """Train the tokenizer on `texts`, initialise the model with `cfg.seed`, save both to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, cfg.vocab_size)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError("tiny.hidden_size must be a multiple of tiny.num_attention_heads")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False):
    """Load a tokenizer so that token ids match what was saved.

    `AutoTokenizer` may map a qwen2 `config.json` to Qwen2Tokenizer, whose own pre-tokenizer
    gives different ids for our BPE; our checkpoints say `tokenizer_class` in their tokenizer
    config, and this loader honours it. Hub models go through AutoTokenizer as usual.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_path = Path(str(model_dir)) / "tokenizer_config.json"
    if cfg_path.exists():
        tok_class = json.loads(cfg_path.read_text()).get("tokenizer_class")
        if tok_class in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
            return _ensure_pad(tok)
    return _ensure_pad(AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code))


def _ensure_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
