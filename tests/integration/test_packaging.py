"""`pip install .` carries everything a run reads: presets, recipes, accelerate configs, bundled data and
prompts are package data, so `sgpo run tiny` works from any folder, not only from a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sgpo.config import CONFIG_DIR
from sgpo.data.sources import BUNDLED_DIR
from sgpo.prompts import PROMPT_DIR

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_every_file_a_run_reads(tmp_path):
    # built from a copy: setuptools writes its build/ folder into the source tree
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "sgpo", "tasks", "flows", "artifacts"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(
            REPO / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}),
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("sgpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "sgpo"
    wanted = [
        *CONFIG_DIR.glob("*.yaml"),
        *(CONFIG_DIR / "methods").glob("*.yaml"),
        *(CONFIG_DIR / "accelerate").glob("*.yaml"),
        *(p for p in BUNDLED_DIR.rglob("*") if p.is_file()),
        *(p for p in PROMPT_DIR.iterdir() if p.suffix in (".txt", ".yaml", ".jsonl", ".md")),
    ]
    assert len(wanted) > 40
    missing = sorted(
        str(p.relative_to(REPO)) for p in wanted if str(p.relative_to(REPO)) not in names
    )
    assert not missing, f"not in the wheel: {missing}"
    # the code that finds them looks inside the package, never beside the checkout
    assert CONFIG_DIR.is_relative_to(package) and BUNDLED_DIR.is_relative_to(package)
    # the stages, flows and the store are installed packages too (launched ranks import them)
    for top in ("tasks/sft.py", "flows/pipeline.py", "artifacts/store.py", "sgpo/cli/main.py"):
        assert top in names
