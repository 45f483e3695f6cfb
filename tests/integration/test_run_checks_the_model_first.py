"""`sgpo run` with a folder that is not a model: one line and exit 2 before the flow starts, never
`base_model ran` followed by a failed `sft` (issue 24, item 6). The tiny kit's saved model passes
the same checks."""

from __future__ import annotations

import pytest

import sgpo.cli.main as cli
from sgpo.models.source import resolve_model_source


@pytest.fixture
def no_flow(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the flow started")

    monkeypatch.setattr(cli, "_call_flow", started)


def test_random_weights_fail_before_the_flow(tmp_path, no_flow, capsys):
    d = tmp_path / "not-a-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x07" * 5000)
    (d / "tokenizer.json").write_text("{}")
    argv = ["run", "tiny", f"model.name_or_path={d}", f"store.url={tmp_path / 'store'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sgpo: {d} is not a usable checkpoint: config.json has no model_type")
    assert "model.safetensors is not a safetensors file" in err and len(err.splitlines()) == 1


def test_a_folder_without_a_model_fails_before_the_flow(tmp_path, no_flow, capsys):
    argv = ["run", "tiny", f"model.name_or_path={tmp_path}", f"store.url={tmp_path / 'store'}"]
    assert cli.main(argv) == 2
    assert f"no model found at {tmp_path}" in capsys.readouterr().err


def test_a_saved_model_passes(tiny_model_dir):
    assert resolve_model_source(str(tiny_model_dir)).kind == "local"
