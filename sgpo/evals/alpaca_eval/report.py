"""The leaderboard report of one model's annotations: one code path for `sgpo metrics alpaca-eval`
and the judge stages."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sgpo.evals.alpaca_eval.length_controlled import length_controlled_win_rate
from sgpo.evals.alpaca_eval.win_rate import win_rate_metrics

LC_MIN_ROWS = 5  # the GLM picks its regularisation by 5-fold grouped CV
UNREGULARISED_NOTE = (
    "LC from the unregularised GLM (no gamed-baseline rows): not the leaderboard's LC, "
    "typically 1-2 points off; give the gamed annotations (hub or a CSV) for the official one"
)


def evaluate_annotations(
    annotations_df: pd.DataFrame,
    instruction_difficulty: pd.Series | None = None,
    *,
    gamed_annotations: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """All leaderboard metrics for one model's annotations (raw WR, discrete WR, LC WR if possible)."""
    out = win_rate_metrics(
        annotations_df["preference"],
        lengths_model=annotations_df["output_2"] if "output_2" in annotations_df.columns else None,
    )
    if instruction_difficulty is not None:
        lc = length_controlled_win_rate(
            annotations_df, instruction_difficulty, gamed_annotations=gamed_annotations
        )
        out["lc_win_rate"] = lc["lc_win_rate"]
        out["lc_standard_error"] = lc["lc_standard_error"]
        out["lc_weights"] = lc["weights"]
        out["lc_regularized"] = lc["regularized"]
    else:
        out["lc_win_rate"] = None
        out["lc_standard_error"] = None
    for key, value in list(out.items()):
        if isinstance(value, float) and math.isnan(value):
            out[key] = None
    return out


def leaderboard_report(
    annotations: list[dict[str, Any]] | pd.DataFrame,
    lc: dict[str, Any],
    *,
    n_source_rows: int | None = None,
) -> dict[str, Any]:
    """WR, discrete WR, SEs, counts, average lengths and (when possible) the LC win rate, JSON-ready;
    `lc` is `resolve_lc_inputs(...)`. `lc_note` says why LC is missing or unofficial."""
    df = annotations if isinstance(annotations, pd.DataFrame) else pd.DataFrame(annotations)
    out: dict[str, Any] = {
        "n": len(df),
        "difficulty_source": lc["difficulty_source"],
        "gamed_source": lc["gamed_source"],
        "lc_hub_error": lc.get("hub_error"),
    }
    empty = {
        "win_rate": None,
        "standard_error": None,
        "discrete_win_rate": None,
        "n_labelled": 0,
        "lc_win_rate": None,
        "lc_standard_error": None,
        "lc_regularized": None,
        "lc_weights": None,
    }
    if df.empty:
        return {**out, **empty, "lc_note": "no annotations"}
    if "index" in df.columns:  # the LC GLM looks the difficulty up by row of the official set
        df = df.set_index("index", drop=False)
        df.index.name = None
    wr = win_rate_metrics(
        df["preference"], lengths_model=df.get("output_2"), lengths_baseline=df.get("output_1")
    )
    out.update(wr)
    out["n_labelled"] = out.pop("n_total", 0)
    out.update(
        {k: None for k in ("lc_win_rate", "lc_standard_error", "lc_regularized", "lc_weights")}
    )
    difficulty, note = lc["difficulty"], None
    if difficulty is None:
        note = "LC not computed: no instruction difficulty (set it, or 'hub')"
    elif n_source_rows is not None and n_source_rows != len(difficulty):
        note = (
            f"LC not computed: the data has {n_source_rows} instructions but the difficulty table {len(difficulty)}; "
            "the LC GLM needs the official 805-instruction AlpacaEval set"
        )
    elif out["n_labelled"] < LC_MIN_ROWS:
        note = f"LC not computed: {out['n_labelled']} labelled rows, the GLM's 5-fold CV needs at least {LC_MIN_ROWS}"
    else:
        try:
            res = length_controlled_win_rate(df, difficulty, gamed_annotations=lc["gamed"])
            out.update(
                lc_win_rate=res["lc_win_rate"],
                lc_standard_error=res["lc_standard_error"],
                lc_regularized=res["regularized"],
                lc_weights=res["weights"],
            )
            note = None if res["regularized"] else UNREGULARISED_NOTE
        except ValueError as e:  # e.g. a degenerate fit on a handful of rows
            note = f"LC not computed: {e}"
    out["lc_note"] = note
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
