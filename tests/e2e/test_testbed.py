"""The testbed comparison (docs/testbed.md, H1): benchmarks/testbed.py over every testbed recipe and
3 seeds (slow)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_the_full_testbed_comparison(tmp_path):
    """benchmarks/testbed.py over every testbed recipe and 3 seeds (about 11 minutes on 2 cores):
    every row fills, and every method removes most of pi_sft's habit (docs/testbed.md, H1)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import testbed as bench

    assert (
        bench.main(
            [
                "-o",
                str(tmp_path / "out"),
                f"store.url={tmp_path / 'store'}",
                "tracking.enabled=false",
            ]
        )
        == 0
    )
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "testbed.json").read_text())}
    assert set(rows) == set(bench.METHODS) and all(r["seeds"] == 3 for r in rows.values())
    assert all(
        rows[m]["habit"][0] < rows["sft"]["habit"][0] / 2 for m in bench.METHODS if m != "sft"
    )
