"""A local folder that has config.json and weights files but is no model fails at the source check,
before any stage (issue 24, item 6): such a folder was reported `base_model ran` (or cached) and
`sft` failed later with `KeyError: 'added_tokens'`, or a chat-template message when the tokenizer
was missing. The checks read the config, the weights' headers and the file names only."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sgpo.models.source import ModelSourceError, resolve_model_source

CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}


def _safetensors(path: Path, data_bytes: int, *, declared: int = 16) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, declared]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * data_bytes)


def _folder(tmp_path: Path, *, config=CONFIG, weights: int = 16, tokenizer=True) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    _safetensors(d / "model.safetensors", weights)
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
        (d / "tokenizer_config.json").write_text("{}")
    return d


def _problem(folder: Path) -> str:
    with pytest.raises(ModelSourceError) as e:
        resolve_model_source(str(folder))
    assert str(e.value).startswith(f"{folder} is not a usable checkpoint: ")
    return str(e.value)


def test_a_well_formed_folder_passes(tmp_path):
    assert resolve_model_source(str(_folder(tmp_path))).kind == "local"


def test_random_bytes_named_safetensors(tmp_path):
    d = _folder(tmp_path)
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 20)
    assert "model.safetensors is not a safetensors file (no valid header)" in _problem(d)


def test_weights_cut_short(tmp_path):
    d = _folder(tmp_path, weights=8)
    assert "model.safetensors is truncated (" in _problem(d)


@pytest.mark.parametrize("config", ["{}", "not json", '{"model_type": 3}'])
def test_a_config_that_is_not_a_transformers_config(tmp_path, config):
    msg = _problem(_folder(tmp_path, config=config))
    assert "config.json is not JSON" in msg or "config.json has no model_type" in msg


def test_no_tokenizer_files(tmp_path):
    assert "no tokenizer files (tokenizer.json, " in _problem(_folder(tmp_path, tokenizer=False))


def test_a_shard_the_index_names_is_missing(tmp_path):
    d = _folder(tmp_path)
    index = {"weight_map": {"w": "model.safetensors", "v": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "names shards the folder lacks: model-00002-of-00002.safetensors" in _problem(d)


def test_what_was_checked_before_still_is(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match="no model found at"):
        resolve_model_source(str(empty))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve_model_source(str(text))
    with pytest.raises(ModelSourceError, match="no such folder or file"):
        resolve_model_source(str(tmp_path / "absent"))
