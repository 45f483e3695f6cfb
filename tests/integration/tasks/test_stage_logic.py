"""Stage logic on the tiny model and in fresh interpreters: response perplexity equals the model's
loss by hand and does not move with padding, the tiny kit's tokenizer round-trips and its model is
deterministic, and cache keys are the same under two hash seeds. The pure stage logic:
tests/unit/tasks/test_stage_logic.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tasks import ppl_filter

KEY_SCRIPT = """
from sgpo.config import load_config
from artifacts.refs import ArtifactRef
from tasks import get_stage
cfg = load_config("tiny")
a = ArtifactRef(uri="u", kind="model", stage="base_model", cache_key="c", content_hash="h1")
d = ArtifactRef(uri="u", kind="table", stage="prepare", cache_key="c", content_hash="h2")
print(get_stage("sft").cache_key(cfg.sft, {"base": a, "data": d}), get_stage("annotate").cache_key(cfg.annotate, {"samples": d}))
"""


def test_response_perplexity_matches_manual_loss(tiny_model_dir):
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from sgpo.models.tinykit import load_tokenizer

    ppl = ppl_filter.response_perplexities(
        str(tiny_model_dir), ["Say hi"], ["Hello there"], batch_size=2, max_length=256
    )
    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prefix = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi"}], tokenize=False, add_generation_prompt=True
    )
    p = tok(prefix, add_special_tokens=False).input_ids
    r = tok("Hello there" + tok.eos_token, add_special_tokens=False).input_ids
    ids = torch.tensor([p + r])
    labels = torch.tensor([[-100] * len(p) + r])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    assert ppl[0] == pytest.approx(math.exp(float(loss)), rel=1e-4)


def test_perplexity_is_padding_invariant(tiny_model_dir):
    alone = ppl_filter.response_perplexities(
        str(tiny_model_dir), ["Q"], ["short answer"], batch_size=1, max_length=256
    )
    batched = ppl_filter.response_perplexities(
        str(tiny_model_dir),
        ["Q", "A much longer prompt " * 5],
        ["short answer", "long " * 20],
        batch_size=2,
        max_length=256,
    )
    assert batched[0] == pytest.approx(alone[0], rel=1e-4)


def test_cache_keys_are_stable_across_processes():
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(
            subprocess.run(
                [sys.executable, "-c", KEY_SCRIPT],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
    assert len(outs) == 1


def test_tiny_tokenizer_round_trip_and_head_dim(tiny_model_dir):
    from transformers import AutoConfig

    from sgpo.models.tinykit import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    text = "Rewrite:  tabs\tand\nnewlines, unicode — é ü 中文 {braces} <|im_end|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids  # special token stays one token
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert cfg.hidden_size // cfg.num_attention_heads == 64


def test_tiny_kit_is_deterministic(tmp_path, tiny_model_dir):
    import hashlib

    from sgpo.models.tinykit import build_bundled_tiny_model

    out = build_bundled_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (
            hashlib.sha256((out / name).read_bytes()).digest()
            == hashlib.sha256((tiny_model_dir / name).read_bytes()).digest()
        )
