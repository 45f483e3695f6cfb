"""Arena-Hard judgment records: their Parquet schema, the official `.jsonl` form, and the score
with its 95% CI from them.

Score: battles with strong verdicts (A>>B, B>>A) counted `weight` (3) times, Bradley-Terry (Elo
scale) anchored at the baseline, predicted win rate vs the baseline, 95% CI from
`bootstrap_rounds` (100) resamples with a fixed seed (42), all via `sgpo.evals.arena_hard.metrics`.
"""

from __future__ import annotations

from typing import Any

from sgpo.config import ArenaHardJudgeConfig


def arena_hard_metrics(
    records: list[dict[str, Any]], cfg: ArenaHardJudgeConfig, model_name: str, baseline: str
) -> dict[str, Any]:
    from sgpo.evals.arena_hard.metrics import format_ci, score

    labels: dict[str, int] = {}
    for rec in records:
        for game in rec["games"]:
            label = game["score"] if game["score"] is not None else "none"
            labels[label] = labels.get(label, 0) + 1
    out: dict[str, Any] = {
        "score": None,
        "ci_low": None,
        "ci_high": None,
        "ci": None,
        "elo": None,
        "n_battles": 0,
        "labels": labels,
        "score_note": None,
    }
    try:
        res = score(
            records,
            baseline=baseline,
            rounds=cfg.bootstrap_rounds,
            seed=cfg.seed,
            weight=cfg.weight,
        )
    except ValueError as e:  # no usable label at all
        out["score_note"] = str(e)
        return out
    m = res.get(model_name, {})
    out.update({k: m.get(k) for k in ("score", "ci_low", "ci_high", "elo", "n_battles")})
    if out["score"] is not None and out["ci_low"] is not None:
        out["ci"] = format_ci(out["score"], out["ci_low"], out["ci_high"])
    return out


def judgment_schema():
    """Parquet schema of the judgments: the official record fields, each game with audit fields."""
    import pyarrow as pa

    game = pa.struct(
        [
            ("user_prompt", pa.string()),
            ("judgment", pa.string()),
            ("score", pa.string()),
            ("turns", pa.int64()),
            ("status", pa.string()),
            ("raw_responses", pa.list_(pa.string())),
        ]
    )
    return pa.schema(
        [
            ("question_id", pa.string()),
            ("model", pa.string()),
            ("judge", pa.string()),
            ("baseline", pa.string()),
            ("category", pa.string()),
            ("games", pa.list_(game)),
        ]
    )


def judgments_from_table(table: Any) -> list[dict[str, Any]]:
    """The official judgment records (`question_id`, `model`, `judge`, `games[{user_prompt, judgment, score}]`)
    from a published `arena_hard_judge` table, e.g. to write a .jsonl for `sgpo metrics arena-hard`."""
    out = []
    for rec in table.to_pylist():
        out.append(
            {
                "question_id": rec["question_id"],
                "model": rec["model"],
                "judge": rec["judge"],
                "games": [
                    {
                        "user_prompt": g["user_prompt"],
                        "judgment": g["judgment"],
                        "score": g["score"],
                    }
                    for g in rec["games"]
                ],
            }
        )
    return out
