"""`sgpo stage NAME --INPUT URI` reads the input where the URI points (issue 24, item 2): in a store
copied elsewhere, with the original moved away, `sample` once failed naming the original folder
("data.parquet is missing (its manifest exists)"), and with the original still there it read the
original's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _stage(cwd: Path, store: Path, name: str, *argv: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "stage", name, "tiny", *argv]
        + [f"store.url={store}", "tracking.enabled=false"],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 16 s; inputs by URI: test_stage_run.py
def test_inputs_are_read_from_the_copy_they_point_into(tmp_path):
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    model = _stage(tmp_path, orig, "base_model")
    data = _stage(tmp_path, orig, "prepare", "--section", "data.po", "data.po.max_rows=4")
    shutil.copytree(orig, copy)
    shutil.move(orig, tmp_path / "moved-away")  # nothing is left at the manifests' paths

    def in_copy(uri: str) -> str:
        return str(copy / uri.split("/orig/", 1)[1])

    made = _stage(
        tmp_path,
        copy,
        "sample",
        "--policy",
        in_copy(model["uri"]),
        "--data",
        in_copy(data["uri"]),
    )
    assert made["uri"].startswith(f"file://{copy}/sample/")
    parents = json.loads((Path(made["uri"][len("file://") :]) / "manifest.json").read_text())[
        "parents"
    ]
    assert parents["policy"]["uri"] == f"file://{in_copy(model['uri'])}"
    assert parents["data"]["uri"] == f"file://{in_copy(data['uri'])}"
    assert parents["data"]["content_hash"] == data["content_hash"]
