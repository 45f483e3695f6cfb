"""`sgpo run` fails with its one-line error and exit status 1 when a stage fails while the stand-in
LLM is generating (issue 20, failure 2: the process died with SIGABRT, status 134, "terminate
called without an active exception"): annotate gives up on answers the stand-in is still writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 57 s; the exit itself: tests/integration/llm/test_embedded_llm_exit.py
def test_a_failed_run_exits_1_with_its_error_while_the_stand_in_generates(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgpo.cli.main",
            "run",
            "tiny",
            f"store.url={tmp_path / 'store'}",
            "tracking.enabled=false",
            "sft.max_steps=1",
            "data.improver.max_rows=4",
            # long answers that the client gives up on at once
            "model.tiny.max_position_embeddings=8192",
            "annotate.accept_truncated=true",
            "annotate.max_tokens=6000",
            "embedded_llm.max_new_tokens_cap=6000",
            "embedded_llm.timeout_s=0.3",
            "annotate.endpoint.timeout_s=0.3",
            "annotate.endpoint.max_retries=0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "terminate called" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sgpo: ")]
    assert errors[0].startswith("sgpo: run failed: stage 'annotate' failed: LLMCallError"), errors
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
