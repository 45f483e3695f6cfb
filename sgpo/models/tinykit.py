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


# Qwen2's pre-tokenizer split. transformers >= 5 loads a qwen2 checkpoint's tokenizer through
# AutoTokenizer as Qwen2Tokenizer *whatever tokenizer_config.json says*, rebuilding the
# pipeline from vocab + merges with exactly this regex, NFC and a regex-free ByteLevel step.
# Training our BPE with the same pipeline makes every loader (AutoTokenizer in any release,
# vLLM, PreTrainedTokenizerFast) produce the same ids.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
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


def bundled_corpus() -> list[Path]:
    """The JSONL files the `tiny` base model's tokenizer is trained on (the bundled tiny data), in order."""
    from sgpo.data.sources import BUNDLED_DIR

    return sorted(BUNDLED_DIR.glob("tiny/*.jsonl"))


def build_bundled_tiny_model(out_dir: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """The model `model.name_or_path: tiny` builds (the base_model stage): `cfg` (default: the defaults)
    on the bundled corpus. Tests, benchmarks and the GPU check build theirs with this, so they get the same."""
    from sgpo.config import TinyModelConfig

    return build_tiny_model(out_dir, cfg or TinyModelConfig(), corpus_texts(bundled_corpus()))


def build_tiny_model(out_dir: str | Path, cfg: TinyModelConfig, texts: list[str]) -> Path:
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
    _pin_tokenizer_class(out)
    return out


def _pin_tokenizer_class(model_dir: Path) -> None:
    """Make `AutoTokenizer.from_pretrained(model_dir)` reload exactly the saved tokenizer.

    transformers 5 saves `tokenizer_class: TokenizersBackend`, a name older releases (e.g. the
    one vLLM pins) do not know; they then fall back to the config's model type (qwen2) and load
    Qwen2Tokenizer, whose own pre-tokenizer gives different ids. `PreTrainedTokenizerFast` (the
    plain tokenizer.json wrapper) is known to every release. The chat template is also copied
    into tokenizer_config.json for releases that do not read chat_template.jinja. Written with
    sorted keys: the file stays byte-identical from build to build.
    """
    path = model_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# What `from_pretrained` needs in a local folder: transformers' own error for a folder without
# them is about its fallbacks ("install sentencepiece / tiktoken"), which sends people astray.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.gguf")


class ModelNotFoundError(FileNotFoundError):
    """A local path that exists but holds no model (e.g. an empty folder, a wrong sub-folder)."""


def check_model_dir(name_or_path: str | Path) -> None:
    """Raise ModelNotFoundError if `name_or_path` is an existing local path that is not a model folder.

    A path that does not exist is left alone: it is a hub id, for the hub loader to resolve.
    """
    p = Path(str(name_or_path)).expanduser()
    if not p.exists():
        return
    missing = []
    if not p.is_dir():
        missing = ["a folder"]
    else:
        if not (p / "config.json").is_file():
            missing.append("config.json")
        if not any(next(p.glob(pat), None) for pat in WEIGHT_PATTERNS):
            missing.append("weights")
    if missing:
        if p.is_dir():
            names = sorted(c.name for c in p.iterdir())
            held = (
                f"it holds {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
                if names
                else "it is empty"
            )
        else:
            held = "it is a file"
        raise ModelNotFoundError(
            f"no model found at {p} (expected config.json + weights (*.safetensors) and tokenizer files, as "
            f"save_pretrained writes them; missing: {', '.join(missing)}; {held})"
        )


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False):
    """Load a tokenizer so that token ids match what was saved.

    `AutoTokenizer` may map a qwen2 `config.json` to Qwen2Tokenizer, whose own pre-tokenizer
    gives different ids for our BPE; our checkpoints say `tokenizer_class` in their tokenizer
    config, and this loader honours it. Hub models go through AutoTokenizer as usual.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_model_dir(model_dir)
    cfg_path = Path(str(model_dir)) / "tokenizer_config.json"
    if cfg_path.exists():
        tok_class = json.loads(cfg_path.read_text()).get("tokenizer_class")
        if tok_class in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
            return _ensure_pad(tok)
    return _ensure_pad(
        AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    )


def _ensure_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
