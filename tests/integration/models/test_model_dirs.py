"""A local folder that is not a model fails with 'no model found at PATH', not a tokenizer-library hint."""

from __future__ import annotations

import shutil

import pytest

from sgpo.models.tinykit import ModelNotFoundError, check_model_dir, load_tokenizer
from sgpo.train.checkpoints import load_model


def _not_models(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    tokenizer_only = (
        tmp_path / "tokenizer-only"
    )  # e.g. a checkpoint copied without config.json and weights
    tokenizer_only.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tokenizer_only / name)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    a_file = tmp_path / "model.txt"
    a_file.write_text("not a model")
    return {
        "empty": empty,
        "tokenizer_only": tokenizer_only,
        "no_weights": no_weights,
        "file": a_file,
    }


@pytest.mark.parametrize("case", ["empty", "tokenizer_only", "no_weights", "file"])
def test_every_loader_says_no_model_found(tmp_path, tiny_model_dir, case):
    from sgpo.generate.hf import TransformersGenerator
    from sgpo.llm.server import TransformersChatBackend

    path = _not_models(tmp_path, tiny_model_dir)[case]
    for load in (load_tokenizer, load_model, TransformersGenerator, TransformersChatBackend):
        with pytest.raises(ModelNotFoundError) as e:
            load(str(path))
        msg = str(e.value)
        assert msg.startswith(f"no model found at {path} (expected config.json + weights"), (
            load,
            msg,
        )
        assert "sentencepiece" not in msg and "tiktoken" not in msg


def test_a_real_model_folder_passes_and_loads(tiny_model_dir):
    check_model_dir(tiny_model_dir)
    assert load_tokenizer(tiny_model_dir).eos_token == "<|im_end|>"
