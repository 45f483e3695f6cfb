"""Warnings that are the only sign of redone or repaid work reach the console of `sgpo run` without
-v, and the Prefect run's logs (issue 24, item 5): a damaged artifact recomputed and a stale lease
taken over were logged by module loggers that neither the quiet console nor Prefect's API handler
heard. One real run of the tiny SFT recipe, on a store holding a truncated `prepare[sft]` whose
folder also holds the lease of a process that no longer exists."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _sgpo(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    return subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_a_recomputed_artifact_and_a_taken_over_lease_are_on_the_runs_output(tmp_path):
    store = tmp_path / "store"
    common = [f"store.url={store}", "tracking.enabled=false"]
    made = _sgpo(tmp_path, "stage", "prepare", "tiny", "--section", "data.sft", *common)
    assert made.returncode == 0, made.stderr
    folder = Path(json.loads(made.stdout.strip().splitlines()[-1])["uri"][len("file://") :])
    with open(folder / "data.parquet", "r+b") as f:
        f.truncate(100)
    (folder / "_lease.json").write_text(
        json.dumps(
            {
                "stage": "prepare",
                "pid": _dead_pid(),
                "host": socket.gethostname(),
                "run_id": "killed",
                "token": "the killed run's",
                "started_at": time.time() - 60,
                "heartbeat_at": time.time(),
                "timeout_s": 300,
            }
        )
    )

    run = _sgpo(tmp_path, "run", "tiny", "method=sft", *common)
    assert run.returncode == 0, run.stderr[-3000:]
    console = run.stdout + run.stderr
    damaged = f"artifact file://{folder} is damaged (data.parquet has 100 bytes"
    taken = "stage prepare: taking over a stale lease (pid"
    assert damaged in console and "so it is recomputed" in console
    assert taken in console
    assert "Traceback" not in console and "| WARNING |" not in console  # Prefect's console: -v

    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        logged = [
            msg
            for (msg,) in db.execute(
                "select message from log where flow_run_id is not null and level >= 30"
            )
        ]
    assert any(damaged in m for m in logged), logged
    assert any(taken in m for m in logged), logged
