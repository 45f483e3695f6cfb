"""One source of truth for "done": the store (issue 22, item 2; issue 24, finding 1).

A stage is reported cached only after its artifact's manifest is found and its data checked (sizes;
content on a local store). Before the fix, Prefect's own cache record answered first: a truncated
or deleted artifact was still reported "cached", and a checkpoint sign-flipped in place (same size)
was consumed by the next stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, resolve_stage
from tasks import get_stage

PREPARE = get_stage("prepare")


def _folder(ref) -> Path:
    return Path(ref.uri.removeprefix("file://"))


@pytest.fixture
def ctx(tmp_path) -> StageContext:
    return StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="first")


def test_prefect_runs_report_cached_only_what_the_store_holds_intact(ctx, capsys):
    """Three flow runs through the pipeline's own runner (Prefect task per stage): the artifact is
    truncated after the first, changed in place (same size) after the second, deleted after the third."""
    from prefect import flow

    from flows.runner import StageRunner

    spec = load_config("tiny").data.eval
    runs = []

    @flow
    def one_stage(run_id: str):
        runner = StageRunner(ctx.model_copy(update={"run_id": run_id}), [])
        ref = runner("prepare[eval]", PREPARE, spec)
        return ref, runner.reports[0].status

    ref, status = one_stage("first")
    assert status == "ran"
    data = _folder(ref) / "data.parquet"
    good = data.read_bytes()

    data.write_bytes(good[:100])  # truncated
    runs.append(one_stage("second"))
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, other content
    data.write_bytes(bytes(flipped))
    runs.append(one_stage("third"))
    shutil.rmtree(_folder(ref))  # the whole folder
    runs.append(one_stage("fourth"))

    assert [status for _, status in runs] == ["ran", "ran", "ran"]
    assert all(r.content_hash == ref.content_hash for r, _ in runs)  # made again, the same
    assert data.read_bytes() == good
    out = capsys.readouterr().out
    assert "recomputed: its stored artifact was damaged (data.parquet has 100 bytes" in out
    assert "data.parquet does not match its manifest" in out
    # and an intact artifact is cached, by the store's lookup
    assert one_stage("fifth")[1] == "cached"


def test_a_checkpoint_changed_in_place_is_neither_reused_nor_consumed(ctx, tiny_model_dir):
    """Sign-flip one weight matrix of a published checkpoint (size unchanged): the lookup treats it
    as absent and says why; a stage given it as input fails naming it, before using it."""
    import torch
    from safetensors.torch import load_file, save_file

    from artifacts.store import CorruptArtifactError

    store = ctx.open_store()
    model = store.publish_model("sft", "k" * 64, tiny_model_dir, manifest={})
    assert store.model_dir(model)  # checked and consumable as published
    weights = _folder(model) / "model" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k, v in sorted(tensors.items()) if v.dim() == 2)
    tensors[name] = -tensors[name]
    size = weights.stat().st_size
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == size and isinstance(tensors[name], torch.Tensor)

    found, damage = store.lookup("sft", "k" * 64)
    assert found is None and damage == [
        "model/model.safetensors does not match its manifest: sha256 "
        + damage[0].split("sha256 ")[1]
    ]
    assert "changed in place" in damage[0]
    spec = load_config("tiny").data.improver
    data = resolve_stage(PREPARE, spec, ctx, {}).ref
    cfg = load_config("tiny").sample
    with pytest.raises(CorruptArtifactError, match=r"sft/kkkk.*model/model.safetensors does not"):
        resolve_stage(get_stage("sample"), cfg, ctx, {"policy": model, "data": data})


def test_a_verified_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    import artifacts.integrity as integrity

    monkeypatch.setenv("SGPO_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"abcd" * 1000)
    digest = integrity.file_sha256(folder / "w.bin")
    hashed = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(p) or real(p))

    assert integrity.local_file_problems(folder, {"w.bin": digest}, {"w.bin": 4000}) == []
    assert integrity.local_file_problems(folder, {"w.bin": digest}, {"w.bin": 4000}) == []
    assert len(hashed) == 1  # the second lookup trusted the mark
    (folder / "w.bin").write_bytes(b"abce" * 1000)  # same size, new content
    problems = integrity.local_file_problems(folder, {"w.bin": digest}, {"w.bin": 4000})
    assert len(hashed) == 2 and problems and "does not match its manifest" in problems[0]
    # `sgpo verify` trusts no mark
    (folder / "w.bin").write_bytes(b"abcd" * 1000)
    assert integrity.local_file_problems(folder, {"w.bin": digest}) == []
    assert integrity.local_file_problems(folder, {"w.bin": digest}, trust_marks=False) == []
    assert len(hashed) == 4


def test_sgpo_verify_checks_every_artifact_and_sgpo_show_prints_settings_and_lineage(ctx, capsys):
    from sgpo.cli.main import main

    cfg = load_config("tiny")
    eval_ref = resolve_stage(PREPARE, cfg.data.eval, ctx, {}).ref
    sft_ref = resolve_stage(PREPARE, cfg.data.sft, ctx, {}).ref
    (_folder(sft_ref.model_copy(update={"uri": sft_ref.uri + "-unfinished"}))).mkdir()
    assert main(["verify", ctx.store.url]) == 0
    assert "2 artifacts checked" in capsys.readouterr().out

    data = _folder(eval_ref) / "data.parquet"
    raw = bytearray(data.read_bytes())
    raw[-20] ^= 1
    data.write_bytes(bytes(raw))
    assert main(["verify", ctx.store.url]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {eval_ref.uri}: data.parquet does not match its manifest" in out
    assert "1 damaged" in out and "1 unfinished folders ignored" in out

    assert main(["show", sft_ref.uri]) == 0
    out = capsys.readouterr().out
    assert "settings (the section as the stage used it):" in out
    assert "bundled:tiny/sft.jsonl" in out and f"key {sft_ref.cache_key}" in out
