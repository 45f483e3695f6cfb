"""The offline reference data folder (official benchmark files and their offline reconstructions)
that the benchmark packages of sgpo.evals read when the hub is out of reach."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA_ENV = "SGPO_SHARED_DATA"

__all__ = ["SHARED_DATA_ENV", "shared_data_dir"]


def shared_data_dir() -> Path:
    """Offline reference data folder: ``$SGPO_SHARED_DATA`` if set, else ``<repo root>/../shared/data``.

    The folder may not exist (a fresh clone has no ``../shared``); callers must check.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data"
