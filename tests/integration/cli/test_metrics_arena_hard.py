"""`python -m sgpo.cli.metrics metrics arena-hard` in a fresh interpreter on the official judgment
sample: exit 0 and exactly one JSON object on stdout. The metric itself:
tests/unit/evals/test_metrics_arena_hard.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgpo.data.shared import shared_data_dir

DATA = shared_data_dir() / "arena_hard"
SAMPLE = DATA / "judgment_sample_Pythia-12B-DPO-UltraFeedback.jsonl"
SAMPLE_MODEL = "Pythia-12B-DPO-UltraFeedback"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _require_data() -> None:
    if not DATA.is_dir():
        pytest.skip(
            f"offline Arena-Hard reference data not found at {DATA} (set SGPO_SHARED_DATA or provide ../shared/data)"
        )


def test_cli_module_entry_point():
    _require_data()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgpo.cli.metrics",
            "metrics",
            "arena-hard",
            str(SAMPLE),
            "--rounds",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert payload["models"][SAMPLE_MODEL]["n_battles"] == 58
