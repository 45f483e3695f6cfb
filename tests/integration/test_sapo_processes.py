"""The `sapo` stage launched through accelerate (issue 21, item 2): two gloo processes on the CPU, each
holding one of the two replay buffers, end where one process holding both ends, and a killed
two-process run resumes to the same artifact.

Why the two runs can be compared at all: a step's loss is the mean over buffers of each buffer's
mean pair loss, and every random choice of buffer k (cuts, sampling, draws) is seeded by
(seed, step, k), so the arithmetic is the same whichever process holds buffer k; the processes
only add the per-process gradients (an all-reduce of two tensors, then / 2). Tolerance: every
weight within 1e-6 (absolute); on this CPU build the two are byte-identical (the content hashes are
equal), the tolerance leaves room for other BLAS builds and reduction orders.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-6
SAPO = ["tracking.enabled=false", "method=sapo-dpo", "sapo.buffers=2", "sapo.batch_size=2"]
TWO = ["sapo.launch.num_processes=2", "sapo.launch.accelerate_config=ddp"]
LONGER = ["sapo.epochs=4", "sapo.checkpoint_every=2"]  # 16 steps: a window to kill it in


def _inputs(store: Path, *overrides: str):
    cfg = load_config("tiny", [f"store.url={store}", *SAPO, *overrides])
    ctx = StageContext(store=StoreConfig(url=str(store)), run_id="test")
    policy = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    data = run_stage(get_stage("prepare"), cfg.data.sapo, ctx, {})
    return cfg, ctx, policy, data


def _weights(ctx: StageContext, ref, parts=(("policy", "."), ("ema", "ema"))) -> dict:
    from safetensors.torch import load_file

    folder = Path(ctx.open_store().model_dir(ref))
    return {name: load_file(str(folder / sub / "model.safetensors")) for name, sub in parts}


def _buffer_rows(ref) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(ref.uri.removeprefix("file://")) / "buffer.parquet").to_pylist()


def test_two_processes_end_where_one_process_holding_both_buffers_ends(tmp_path):
    store = tmp_path / "store"
    one_cfg, ctx, policy, data = _inputs(store)
    two_cfg = load_config("tiny", [f"store.url={store}", *SAPO, *TWO])
    st, inputs = get_stage("sapo"), {"policy": policy, "data": data}
    # the number of processes is hardware: not in the key, the artifact is the same run
    assert st.cache_key(one_cfg.sapo, inputs) == st.cache_key(two_cfg.sapo, inputs)

    one = run_stage(st, one_cfg.sapo, ctx, inputs)
    w1, rows1 = _weights(ctx, one), _buffer_rows(one)
    shutil.rmtree(store / "sapo")  # the artifact and its checkpoints: the launch starts afresh
    two = run_stage(st, two_cfg.sapo, ctx, inputs)
    assert two.cache_key == one.cache_key and two.summary["resumed_from_step"] is None
    w2, rows2 = _weights(ctx, two), _buffer_rows(two)

    # 16 rows, 2 buffers x 2 rows a step: 4 steps, every buffer got 8 rows and gave 8 draws
    assert one.summary["steps"] == two.summary["steps"] == 4
    assert sorted({r["buffer"] for r in rows2}) == [0, 1]
    for rows in (rows1, rows2):
        for k in (0, 1):
            mine = [r for r in rows if r["buffer"] == k]
            assert len(mine) == 8 and sum(r["uses"] for r in mine) == 4 * 2
    assert rows1 == rows2  # the same rejected answers, cuts and use counts in each buffer

    for name in ("policy", "ema"):
        a, b = w1[name], w2[name]
        assert a.keys() == b.keys()
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert diff <= TOL, (name, diff)
    start = _weights(ctx, policy, parts=(("policy", "."),))["policy"]
    moved = max(float((w1["policy"][k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4  # the steps moved the weights: the comparison above is not vacuous


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_artifact(tmp_path):
    _, _, policy, data = _inputs(tmp_path / "killed", *LONGER)
    args = [
        sys.executable,
        "-m",
        "tasks.sapo",
        "tiny",
        f"store.url={tmp_path / 'killed'}",
        *SAPO,
        *TWO,
        *LONGER,
        "--policy",
        policy.uri,
        "--data",
        data.uri,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    # its own session: the kill takes the launcher and both ranks
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    checkpoints = tmp_path / "killed" / "sapo"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if list(checkpoints.glob("*/_work/checkpoints/step-*/complete.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the run ended before a checkpoint could be killed: " + proc.stderr.read().decode()[-3000:]
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(checkpoints.glob("*/manifest.json"))  # nothing looks finished

    resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from artifacts.refs import ArtifactRef

    ref = ArtifactRef.model_validate_json(resumed.stdout.strip().splitlines()[-1])
    assert ref.summary["resumed_from_step"] >= 2

    # the uninterrupted run, in one process: the same artifact, byte for byte
    cfg, ctx, policy2, data2 = _inputs(tmp_path / "clean", *LONGER)
    clean = run_stage(get_stage("sapo"), cfg.sapo, ctx, {"policy": policy2, "data": data2})
    assert clean.summary["steps"] == ref.summary["steps"] == 16
    assert clean.content_hash == ref.content_hash  # policy and EMA weights
    assert _buffer_rows(clean) == _buffer_rows(ref)  # entries and use counts of both buffers
