"""benchmarks/testbed.py's table: mean ± SE over seeds, and the refiner of every round of every seed
with the share of refinements equal to the answer (pairs DPO skips: issue 20's finding)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from testbed import table  # noqa: E402


def _report(em: float, refiner: list[dict] | None = None) -> dict:
    final = {"exact_match": em, "mean_quality": em, "habit_rate": 0.0}
    rep = {"final": final, "sft": final, "win_rate": 50.0, "standard_error": 1.0}
    return {**rep, "refiner": refiner} if refiner else rep


def _q(refined: float, answer: float, better: float, worse: float) -> dict:
    return {
        "refined_score": refined,
        "answer_score": answer,
        "better": better,
        "worse": worse,
        "equal": 1 - better - worse,
    }


def test_two_seeds_two_rounds():
    results = {
        "sgpo-step2": {
            0: _report(0.30, [_q(0.49, 0.46, 0.09, 0.05), _q(0.46, 0.44, 0.06, 0.05)]),
            1: _report(0.40, [_q(0.51, 0.52, 0.14, 0.09)]),
        },
        "sft": {0: _report(0.18), 2: _report(0.28)},
    }
    md, rows = table(results, [0, 1, 2])
    lines = md.splitlines()
    # 30 and 40: mean 35, sd 7.07, SE 5.0
    assert lines[2].startswith("| sgpo-step2 | 2 | 35.0 ± 5.0 |")
    assert lines[2].endswith(
        "| 30.0, 40.0, missing | 0.49 vs 0.46 (9 / 5 / 86) then 0.46 vs 0.44 (6 / 5 / 89); "
        "0.51 vs 0.52 (14 / 9 / 77) |"
    )
    assert lines[3].endswith("| 18.0, missing, 28.0 | - |")
    assert rows[0]["exact_match"][0] == 35.0 and rows[0]["per_seed"][2] is None
