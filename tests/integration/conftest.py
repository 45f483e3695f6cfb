"""Fixtures of the integration tier (one stage or component on a tiny model, a real server)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def endless_model(tmp_path_factory) -> Path:
    """The tiny kit's model with room for long answers (8192 positions) that never end by
    themselves (`min_new_tokens` in its generation config): a generation lasts as long as its
    max_tokens says, so a test can make the stand-in LLM slow without sleeping in a fake."""
    from transformers import GenerationConfig

    from sgpo.config import TinyModelConfig
    from sgpo.models.tinykit import build_tiny_model, bundled_corpus, corpus_texts

    out = tmp_path_factory.mktemp("endless") / "model"
    build_tiny_model(
        out, TinyModelConfig(max_position_embeddings=8192), corpus_texts(bundled_corpus())
    )
    gen = GenerationConfig.from_pretrained(out)
    gen.min_new_tokens = 6000
    gen.save_pretrained(out)
    return out
