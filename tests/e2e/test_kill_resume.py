"""`kill -9` of `sgpo run` during a later stage, then a re-run: only unfinished stages run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
LINE = re.compile(r"^\[sgpo\] (\S+)\s+(ran|cached)\s")


def _sgpo(tmp: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sgpo.cli.main",
            "run",
            f"store.url={tmp}/store",
            f"tracking.mlflow_uri=sqlite:///{tmp}/mlflow.db",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp,
        start_new_session=True,  # so the kill also takes Prefect's ephemeral server child down
    )


def test_kill_during_pairs_then_resume(tmp_path):
    proc = _sgpo(tmp_path)
    seen: dict[str, str] = {}
    deadline = time.time() + 480
    try:
        for line in proc.stdout:
            m = LINE.match(line)
            if m:
                seen[m.group(1)] = m.group(2)
            if "improver_sft" in seen:  # pairs is running now
                time.sleep(0.5)
                break
            assert time.time() < deadline, "pipeline too slow to reach improver_sft"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "pairs" not in seen and "dpo" not in seen
    assert not list((tmp_path / "store" / "dpo").rglob("manifest.json"))

    again = _sgpo(tmp_path)
    out, _ = again.communicate(timeout=480)
    assert again.returncode == 0, out
    status = {m.group(1): m.group(2) for m in map(LINE.match, out.splitlines()) if m}
    # at most the killed stage and those after it in the plan (prepare[eval] is made right before the judge)
    assert {k for k, v in status.items() if v == "ran"} <= {
        "pairs",
        "dpo",
        "prepare[eval]",
        "judge",
        "report",
    }
    assert status["dpo"] == "ran" and status["judge"] == "ran"
    assert all(
        status[s] == "cached" for s in ("sft", "sample", "annotate", "ppl_filter", "improver_sft")
    )
