"""`python -m tasks.<stage>` and `sgpo stage NAME` take their flags anywhere among the config and
the overrides (issue 24, item 4), in a real process: the override after `--force` is applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *argv: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, *argv, f"store.url={tmp_path / 'store'}", "tracking.enabled=false"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flags_between_the_preset_and_the_overrides(tmp_path):
    ref = _run(
        tmp_path,
        "-m",
        "tasks.prepare",
        "tiny",
        "--force",
        "data.po.max_rows=3",
        "--section",
        "data.po",
    )
    assert ref["rows"] == 3
    ref = _run(
        tmp_path,
        "-m",
        "sgpo.cli.main",
        "stage",
        "prepare",
        "--section",
        "data.po",
        "tiny",
        "--run-id",
        "mine",
        "data.po.max_rows=5",
    )
    assert ref["rows"] == 5 and ref["produced_by"] == "mine"
