"""The reference benchmark data (../shared/data, or SGPO_SHARED_DATA): a test that reads some of it
skips, naming the missing files, where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(
            f"reference data absent: {missing} (set SGPO_SHARED_DATA to the shared/data folder)"
        )
