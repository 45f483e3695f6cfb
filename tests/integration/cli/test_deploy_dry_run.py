"""`sgpo deploy --dry-run` says that nothing was registered; it never claims "deployed"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_dry_run_registers_nothing_and_says_so():
    env = {
        **os.environ,
        # an address nobody listens on: with --skip-pools a dry run must not need the server at all
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "PYTHONPATH": str(REPO),
    }
    r = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "deploy", "--dry-run", "--skip-pools"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[sgpo] dry run: would deploy to http://127.0.0.1:9/api" in r.stdout, r.stdout
    assert "deploy --prefect-file" in r.stdout  # the command it would run
    assert "[sgpo] dry run: nothing registered" in r.stdout, r.stdout
    assert "deployed" not in r.stdout, r.stdout
