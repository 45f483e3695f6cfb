"""What a run reports: one line per stage; for evaluations, the headline rows, lines and MLflow metrics.

Shared by the evaluation flow (UI table artifact, MLflow parent metrics) and `sgpo evaluate`
(the printed lines), so the three always show the same numbers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class StageReport(BaseModel):
    """One stage of a run: ran or cached, how long, its artifact."""

    stage: str
    status: str = Field(description="ran | cached")
    seconds: float
    uri: str
    content_hash: str
    summary: dict[str, Any] = Field(default_factory=dict)


def dropped_note(summary: dict[str, Any] | None, rows: str = "rows") -> str:
    """' (1 of 16 rows dropped: ...)' for a prepared table that lost rows of its data, else ''.

    A smaller eval set changes what "15 of 15 judged" means: the count goes wherever one is printed."""
    n, of = (summary or {}).get("rows_dropped"), (summary or {}).get("rows_read")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0 or not isinstance(of, int):
        return ""
    return f" ({n} of {of} {rows} dropped: no prompt, or an empty response / reference)"


class EvaluationReport(BaseModel):
    flow_run_id: str | None = None
    mlflow_run_id: str | None = None
    model: str = Field(
        description="URI of the evaluated model (hf://ID, or file:///DIR for a local folder outside the store)"
    )
    model_name: str
    stages: list[StageReport]
    alpaca_eval: dict[str, Any] | None = Field(
        None, description="The alpaca_eval_judge report (WR, LC, SEs, ...)"
    )
    arena_hard: dict[str, Any] | None = Field(
        None, description="The arena_hard_judge report (score, CI, ...)"
    )
    pairwise: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per comparison name: its report"
    )
    mt_bench: dict[str, Any] | None = Field(
        None, description="The mt_bench_judge report (turn 1, turn 2, overall, ...)"
    )
    lm_eval: dict[str, Any] | None = Field(
        None, description="The lm_eval report (headline metric per task, ...)"
    )
    report_uri: str | None = Field(
        None, description="The `report` stage's artifact (report.html inside)"
    )


def result_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    """One row per benchmark / comparison: the headline numbers (for the UI table and the CLI)."""
    rows = []
    if a := report.alpaca_eval:
        rows.append(
            {
                "benchmark": "AlpacaEval 2.0",
                "model": a.get("model"),
                "vs": a.get("baseline"),
                "score": a.get("win_rate"),
                "se_or_ci": a.get("standard_error"),
                "lc_win_rate": a.get("lc_win_rate"),
                "lc_se": a.get("lc_standard_error"),
                "n": a.get("n_labelled"),
                "note": a.get("lc_note") or a.get("difficulty_source"),
                "report": a.get("report_uri"),
            }
        )
    if h := report.arena_hard:
        rows.append(
            {
                "benchmark": "Arena-Hard v0.1",
                "model": h.get("model"),
                "vs": h.get("baseline"),
                "score": h.get("score"),
                "se_or_ci": h.get("ci"),
                "lc_win_rate": None,
                "lc_se": None,
                "n": h.get("n_questions"),
                "note": h.get("score_note"),
                "report": h.get("report_uri"),
            }
        )
    for name, p in report.pairwise.items():
        rows.append(
            {
                "benchmark": f"pairwise {name}",
                "model": p.get("model_column"),
                "vs": p.get("baseline_column"),
                "score": p.get("win_rate"),
                "se_or_ci": p.get("standard_error"),
                "lc_win_rate": None,
                "lc_se": None,
                "n": p.get("n_labelled"),
                "note": None,
                "report": p.get("report_uri"),
            }
        )
    if m := report.mt_bench:
        rows.append(
            {
                "benchmark": "MT-Bench",
                "model": m.get("model"),
                "vs": None,
                "score": m.get("score"),
                "se_or_ci": None,
                "lc_win_rate": None,
                "lc_se": None,
                "n": m.get("n_rated"),
                "note": f"turn 1 {m.get('score_turn_1')}, turn 2 {m.get('score_turn_2')}, "
                f"{m.get('n_no_rating')} without a rating",
                "report": m.get("report_uri"),
            }
        )
    if e := report.lm_eval:
        for task, value in (e.get("headline") or {}).items():
            rows.append(
                {
                    "benchmark": f"lm-eval {task}",
                    "model": e.get("model"),
                    "vs": None,
                    "score": value,
                    "se_or_ci": None,
                    "lc_win_rate": None,
                    "lc_se": None,
                    "n": None,
                    "note": f"{(e.get('n_shot') or {}).get(task)}-shot"
                    + ("" if e.get("comparable") else ", limit: NOT comparable"),
                    "report": e.get("report_uri"),
                }
            )
    return rows


def summary_lines(report: EvaluationReport) -> list[str]:
    """Human-readable headline lines (for the `sgpo evaluate` command)."""

    def num(v: Any, fmt: str = "{:.2f}") -> str:
        return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"

    lines = []
    if a := report.alpaca_eval:
        lc = (
            f"LC {num(a.get('lc_win_rate'))} (SE {num(a.get('lc_standard_error'))}, difficulty {a.get('difficulty_source')}"
            f"{', regularised' if a.get('lc_regularized') else ''})"
            if a.get("lc_win_rate") is not None
            else f"no LC ({a.get('lc_note')})"
        )
        lines.append(
            f"[sgpo] AlpacaEval 2.0: WR {num(a.get('win_rate'))} (SE {num(a.get('standard_error'))}), "
            f"discrete {num(a.get('discrete_win_rate'))}, {lc}; {a.get('n_labelled')} of {a.get('n')} judged, "
            f"avg length {a.get('avg_length')} vs {a.get('baseline')}; {a.get('report_uri')}"
        )
    if h := report.arena_hard:
        score = (
            f"score {num(h.get('score'))} {h.get('ci') or ''} (95% CI {num(h.get('ci_low'))}-{num(h.get('ci_high'))})"
            if h.get("score") is not None
            else f"no score ({h.get('score_note')})"
        )
        lines.append(
            f"[sgpo] Arena-Hard v0.1: {score} vs {h.get('baseline')}, {h.get('n_questions')} questions, "
            f"{h.get('n_games_without_label')} games without a label; {h.get('report_uri')}"
        )
    for name, p in report.pairwise.items():
        lines.append(
            f"[sgpo] pairwise {name}: {p.get('model_column')} beats {p.get('baseline_column')} in "
            f"{num(p.get('win_rate'))}% (SE {num(p.get('standard_error'))}) of {p.get('n_labelled')} judged pairs"
        )
    if m := report.mt_bench:
        lines.append(
            f"[sgpo] MT-Bench: {num(m.get('score'))} (turn 1 {num(m.get('score_turn_1'))}, turn 2 "
            f"{num(m.get('score_turn_2'))}), judge {m.get('judge_model')}, {m.get('n_no_rating')} of "
            f"{m.get('n_judgments')} judgments without a rating; {m.get('report_uri')}"
        )
    if e := report.lm_eval:
        heads = ", ".join(f"{t} {num(v, '{:.4f}')}" for t, v in (e.get("headline") or {}).items())
        lines.append(
            f"[sgpo] lm-eval: {heads or 'no headline metric'}{'' if e.get('comparable') else ' (limit set: NOT comparable)'}"
            f"; {e.get('report_uri')}"
        )
    return lines


def parent_metrics(report: EvaluationReport) -> dict[str, float]:
    """Headline numbers as MLflow metrics of the evaluation's parent run."""
    out: dict[str, float] = {}

    def put(prefix: str, d: dict[str, Any] | None, keys: tuple[str, ...]) -> None:
        for k in keys:
            v = (d or {}).get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}.{k}"] = float(v)

    put(
        "alpaca_eval",
        report.alpaca_eval,
        (
            "win_rate",
            "standard_error",
            "discrete_win_rate",
            "lc_win_rate",
            "lc_standard_error",
            "avg_length",
            "n_labelled",
        ),
    )
    put("arena_hard", report.arena_hard, ("score", "ci_low", "ci_high", "n_questions"))
    for name, p in report.pairwise.items():
        put(
            f"pairwise.{name}", p, ("win_rate", "standard_error", "discrete_win_rate", "n_labelled")
        )
    if report.mt_bench:
        put("mt_bench", report.mt_bench, ("score", "score_turn_1", "score_turn_2", "n_no_rating"))
    if report.lm_eval:
        put(
            "lm_eval",
            report.lm_eval.get("headline") or {},
            tuple((report.lm_eval.get("headline") or {}).keys()),
        )
    return out
