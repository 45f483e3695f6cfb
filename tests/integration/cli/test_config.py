"""Config errors through the real `sgpo` command: a fresh interpreter, its exit status and stderr."""

from __future__ import annotations

import subprocess
import sys


def test_cli_config_error_exits_2_with_one_paragraph():
    r = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "run", "sft.lr=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "sft.lr: unknown key" in r.stderr and "Traceback" not in r.stderr
