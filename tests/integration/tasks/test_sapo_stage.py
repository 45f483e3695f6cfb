"""The `sapo` stage: the tiny SAPO-DPO and SAPO-ORPO recipes through the stage, and a kill -9 of the
stage mid-training that resumes from its checkpoints to the same final state as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

REPO = Path(__file__).resolve().parents[3]
LONGER = ["sapo.epochs=6", "sapo.checkpoint_every=2"]  # 24 steps: a window to kill it in


def _inputs(store: Path, *overrides: str):
    cfg = load_config("tiny", [f"store.url={store}", "tracking.enabled=false", *overrides])
    ctx = StageContext(store=StoreConfig(url=str(store)), run_id="test")
    policy = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    data = run_stage(get_stage("prepare"), cfg.data.sapo, ctx, {})
    return cfg, ctx, policy, data


@pytest.mark.parametrize("loss", ["dpo", "orpo"])
def test_the_sapo_stage_publishes_policy_ema_and_buffer(tmp_path, loss):
    import pyarrow.parquet as pq

    cfg, ctx, policy, data = _inputs(tmp_path / "store", f"method=sapo-{loss}")
    ref = run_stage(get_stage("sapo"), cfg.sapo, ctx, {"policy": policy, "data": data})
    folder = Path(ref.uri.removeprefix("file://"))
    assert (folder / "model" / "model.safetensors").is_file() and (
        folder / "model" / "ema" / "model.safetensors"
    ).is_file()
    buffer = pq.read_table(folder / "buffer.parquet").to_pylist()
    assert (
        len(buffer) == ref.summary["buffer_size"] == 16
    )  # 16 rows, one rejected each, capacity 64
    assert (
        sum(b["uses"] for b in buffer) == 4 * 4
    )  # 4 steps (16 rows / batch 4, 1 epoch), 4 draws each
    assert ref.summary["steps"] == 4 and {
        "prompt",
        "chosen_text",
        "rejected_text",
        "cut",
        "step",
    } <= set(buffer[0])
    manifest = ctx.open_store().read_manifest(ref)
    assert (
        manifest["loss"] == loss
        and manifest["parents"]["data"]["content_hash"] == data.content_hash
    )
    # the report's SAPO figures come from this artifact: per-step curves in the manifest, the buffer beside it
    assert [h["step"] for h in manifest["train_history"]] == [1, 2, 3, 4] and "loss" in manifest[
        "train_history"
    ][0]
    from sgpo.report.figures import RunArtifacts, StageEntry, make_figures
    from sgpo.report.html import side_rows_reader, table_reader

    entry = StageEntry(
        label="sapo",
        stage="sapo",
        uri=ref.uri,
        content_hash=ref.content_hash,
        summary=ref.summary,
        manifest=manifest,
    )
    figs = {
        f.id: f
        for f in make_figures(
            RunArtifacts([entry], table_reader(), read_side_rows=side_rows_reader())
        )
    }
    assert figs["train_sapo"].missing is None and figs["train_sapo"].counts["loss"] == 4
    assert figs["sapo_buffer"].missing is None and figs["sapo_buffer"].counts["n"] == 16
    # a second run is the cached artifact
    assert (
        run_stage(
            get_stage("sapo"),
            cfg.sapo,
            ctx.model_copy(update={"run_id": "other"}),
            {"policy": policy, "data": data},
        )
        == ref
    )


def test_a_killed_sapo_stage_resumes_to_the_state_of_an_uninterrupted_run(tmp_path):
    import pyarrow.parquet as pq

    _, _, policy, data = _inputs(tmp_path / "killed", *LONGER)
    args = [
        sys.executable,
        "-m",
        "tasks.sapo",
        "tiny",
        f"store.url={tmp_path / 'killed'}",
        "tracking.enabled=false",
        *LONGER,
        "--policy",
        policy.uri,
        "--data",
        data.uri,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "killed" / "sapo"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(checkpoints.glob("*/_work/checkpoints/step-*/complete.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the run ended before a checkpoint could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(checkpoints.glob("*/manifest.json"))  # nothing looks finished

    resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from artifacts.refs import ArtifactRef

    ref = ArtifactRef.model_validate_json(resumed.stdout.strip().splitlines()[-1])
    assert ref.summary["resumed_from_step"] >= 2

    cfg, ctx, policy2, data2 = _inputs(tmp_path / "clean", *LONGER)
    clean = run_stage(get_stage("sapo"), cfg.sapo, ctx, {"policy": policy2, "data": data2})
    assert (
        clean.summary["resumed_from_step"] is None
        and clean.summary["steps"] == ref.summary["steps"] == 24
    )
    assert clean.content_hash == ref.content_hash  # policy and EMA weights, byte for byte
    buffers = [
        pq.read_table(Path(r.uri.removeprefix("file://")) / "buffer.parquet").to_pylist()
        for r in (ref, clean)
    ]
    assert buffers[0] == buffers[1]  # entries and use counts
