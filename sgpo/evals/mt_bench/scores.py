"""MT-Bench scores: FastChat `show_result.py` (`display_result_single`): the mean rating of turn 1,
of turn 2 and overall (the MT-Bench score), and per category; the judgments' Parquet schema."""

from __future__ import annotations

from typing import Any


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def mt_bench_scores(judgments: list[dict[str, Any]]) -> dict[str, Any]:
    """Upstream `display_result_single`: rated judgments only; turn 1, turn 2, overall; plus per category."""
    rated = [j for j in judgments if j["score"] is not None]
    by_turn = {t: [j["score"] for j in rated if j["turn"] == t] for t in (1, 2)}
    categories = sorted({j["category"] for j in judgments})
    table = []
    for c in categories:
        cj = [j for j in rated if j["category"] == c]
        table.append(
            {
                "category": c,
                "turn_1": _mean([j["score"] for j in cj if j["turn"] == 1]),
                "turn_2": _mean([j["score"] for j in cj if j["turn"] == 2]),
                "score": _mean([j["score"] for j in cj]),
                "n_rated": len(cj),
                "n_no_rating": sum(
                    1 for j in judgments if j["category"] == c and j["score"] is None
                ),
            }
        )
    return {
        "score": _mean([j["score"] for j in rated]),
        "score_turn_1": _mean(by_turn[1]),
        "score_turn_2": _mean(by_turn[2]),
        "n_judgments": len(judgments),
        "n_rated": len(rated),
        "n_no_rating": len(judgments) - len(rated),
        "n_no_rating_turn_1": sum(1 for j in judgments if j["turn"] == 1 and j["score"] is None),
        "n_no_rating_turn_2": sum(1 for j in judgments if j["turn"] == 2 and j["score"] is None),
        "categories": table,
    }


def judgment_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("question_id", pa.string()),
            ("category", pa.string()),
            ("turn", pa.int64()),
            ("model", pa.string()),
            ("judge", pa.string()),
            ("judge_prompt", pa.string()),
            ("user_prompt", pa.string()),
            ("judgment", pa.string()),
            ("score", pa.float64()),
            ("status", pa.string()),
            ("raw_response", pa.string()),
        ]
    )
