"""The methods comparison table from judged artifacts: its rows, which cells are comparable, the
`sgpo evaluate` results of a model found by content hash, and the papers' numbers beside ours.

Two layouts: the SGPO paper's (AlpacaEval 2.0 LC / WR, Arena-Hard) and, on the SAPO presets, the
SAPO paper's (Open LLM Leaderboard tasks and average, IFEval, MT-Bench turns, AlpacaEval 2.0 LC /
WR / length). Every benchmark column has a "(paper)" twin: the published number with the table it
comes from, from the shipped copy of the papers' numbers (sgpo.report.paper_numbers).

Used by `sgpo compare` (flows/compare.py: one row per recipe, resolved against the store) and by
`sgpo report RUN RUN ...` (sgpo/report/html.py: one row per run). Only comparable cells side by side:
every AE2 / Arena-Hard cell comes from a judge report that records what it was measured with
(benchmark version, judge model, prompt version, decoding, and for LC the sources of the
instruction-difficulty and gamed-baseline files). A cell whose setting differs from its column's
majority, or, on the paper's presets, from the paper's setting (`PAPER_SETTINGS`), is marked ` *`
and its row's status names each differing field (`comparability`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sgpo.report.paper_numbers import SAPO_PRESETS, SOURCE, paper_cells

PAPER_PRESETS = ("qwen2.5-7b", "llama3-8b", "qwen2-1.5b")  # the SGPO paper's models
# lm-eval tasks of the SAPO paper's Open LLM Leaderboard columns (configs/eval-sapo.yaml)
OPEN_LLM_TASKS = {
    "ARC": "arc_challenge",
    "TruthfulQA": "truthfulqa_mc2",
    "Winogrande": "winogrande",
    "GSM8K": "gsm8k",
    "HellaSwag": "hellaswag",
    "MMLU": "mmlu",
}


@dataclass
class Row:
    """One method of the table."""

    method: str
    preset: str
    status: str  # "done", or why not ("not run: sft missing")
    final_policy: str | None = None
    judge_win_rate: float | None = None
    judge_se: float | None = None
    judge_n: int | None = None
    lc: float | None = None
    lc_se: float | None = None
    wr: float | None = None
    wr_se: float | None = None
    arena_hard: float | None = None
    arena_hard_ci: str | None = None
    notes: list[str] = field(default_factory=list)
    # what each benchmark's cell was measured with ("alpaca_eval" / "arena_hard" -> field -> value)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the SAPO layout's other benchmarks: lm-eval headline scores in % (task -> value), MT-Bench
    # (turn_1 / turn_2 / score, 1-10), AlpacaEval 2.0's average answer length (characters)
    lm_eval: dict[str, float] = field(default_factory=dict)
    mt_bench: dict[str, float] = field(default_factory=dict)
    ae_length: float | None = None


# The fields each cell is compared on (`decoding.*` and `*_source` as `settings_of` flattens them); the
# seed is not one of them (another seed is another sample of the same setting).
_DECODING = ("decoding.temperature", "decoding.top_p", "decoding.max_new_tokens")
CELL_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {  # column -> (benchmark, fields)
    "AE2 WR (ours)": (
        "alpaca_eval",
        ("benchmark_version", "judge_model", "prompt_version", *_DECODING),
    ),
    "AE2 LC (ours)": (
        "alpaca_eval",
        (
            "benchmark_version",
            "judge_model",
            "prompt_version",
            *_DECODING,
            "lc_regularized",
            "difficulty_source",
            "gamed_source",
        ),
    ),
    "Arena-Hard WR (95% CI) (ours)": (
        "arena_hard",
        ("benchmark_version", "judge_model", "prompt_version", *_DECODING),
    ),
}
# The SGPO paper's setting (configs/eval-sgpo.yaml): on a paper preset a cell is compared with these
# rather than with its column's majority (fields not named here: the majority).
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "alpaca_eval": {
        "benchmark_version": "alpaca_eval 2.0 (weighted_alpaca_eval_gpt4_turbo)",
        "judge_model": "gpt-4-1106-preview",
        "decoding.temperature": 0.7,
        "decoding.top_p": 0.9,
        "lc_regularized": True,
    },
    "arena_hard": {
        "benchmark_version": "arena-hard-v0.1",
        "judge_model": "gpt-4-1106-preview",
        "decoding.temperature": 0.0,
    },
}


def _source_id(source: Any) -> Any:
    """An auxiliary file's source by kind and content, not by where it lies: 'offline-reconstruction@<sha256[:16]>'."""
    if not isinstance(source, str):
        return source
    kind = source.split(":", 1)[0]
    sha = re.search(r"sha256:([0-9a-f]{16})", source)
    return f"{kind}@{sha.group(1)}" if sha else source


def settings_of(bench: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The comparability fields of a judge report (alpaca_eval_judge / arena_hard_judge summary)."""
    out: dict[str, Any] = {k: summary.get(k) for k in ("benchmark_version", "judge_model")}
    # Arena-Hard's judge prompt and settings are versioned together (`judge_settings`)
    out["prompt_version"] = (
        summary.get("prompt_version") if bench == "alpaca_eval" else summary.get("judge_settings")
    )
    decoding = summary.get("decoding") or {}
    out.update({k: decoding.get(k.split(".", 1)[1]) for k in _DECODING})
    if bench == "alpaca_eval":
        out["lc_regularized"] = summary.get("lc_regularized")
        out.update({k: _source_id(summary.get(k)) for k in ("difficulty_source", "gamed_source")})
    return out


def comparability(rows: list[Row]) -> dict[tuple[int, str], list[str]]:
    """(row index, column) -> why the cell is not comparable ('judge_model gpt-4o (column: gpt-4-1106-preview)');
    cells without a number or with the column's setting are absent."""
    out: dict[tuple[int, str], list[str]] = {}
    for column, (bench, fields) in CELL_FIELDS.items():
        present = [
            (i, r.settings[bench])
            for i, r in enumerate(rows)
            if bench in r.settings and _cell_value(r, column) is not None
        ]
        for f in fields:
            counts = Counter(
                json.dumps(st.get(f), sort_keys=True, default=str) for _, st in present
            )
            ranked = counts.most_common()
            majority = (
                json.loads(ranked[0][0])
                if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1])
                else None
            )
            tie = len(ranked) > 1 and majority is None
            for i, st in present:
                paper = PAPER_SETTINGS.get(bench, {})
                if rows[i].preset in PAPER_PRESETS and f in paper:
                    ref, what = paper[f], "paper"
                elif tie:
                    ref, what = object(), "no majority in the column"
                else:
                    ref, what = majority, "column"
                if st.get(f) != ref:
                    shown = "" if what == "no majority in the column" else f": {ref}"
                    out.setdefault((i, column), []).append(f"{f} {st.get(f)} ({what}{shown})")
    return out


def _cell_value(r: Row, column: str) -> float | None:
    return {
        "AE2 WR (ours)": r.wr,
        "AE2 LC (ours)": r.lc,
        "Arena-Hard WR (95% CI) (ours)": r.arena_hard,
    }[column]


def _manifests(store: Any, stage: str) -> list[dict[str, Any]]:
    root = store._path(f"{store.url}/{stage}")
    if not store.fs.exists(root):
        return []
    out = []
    for path in store.fs.glob(f"{root}/*/manifest.json"):
        with store.fs.open(path, "rb") as f:
            out.append(json.loads(f.read()))
    return out


def evaluations_of(store: Any, model_hash: str) -> dict[str, dict[str, Any]]:
    """The newest `alpaca_eval_judge`, `arena_hard_judge` and `mt_bench_judge` reports and `lm_eval`
    summary for a model, by content hash."""
    out: dict[str, dict[str, Any]] = {}
    lm = [
        m
        for m in _manifests(store, "lm_eval")
        if m.get("parents", {}).get("model", {}).get("content_hash") == model_hash
    ]
    if lm:
        out["lm_eval"] = max(lm, key=lambda m: m.get("created_at", ""))["ref"]["summary"]
    for bench in ("alpaca_eval", "arena_hard", "mt_bench"):
        generated = {
            m["ref"]["uri"]
            for m in _manifests(store, f"{bench}_generate")
            if m.get("parents", {}).get("model", {}).get("content_hash") == model_hash
        }
        judged = [
            m
            for m in _manifests(store, f"{bench}_judge")
            if m.get("parents", {}).get("answers", {}).get("uri") in generated
        ]
        if judged:
            out[bench] = max(judged, key=lambda m: m.get("created_at", ""))["ref"]["summary"]
    return out


def add_evaluations(row: Row, store: Any, model_hash: str, model_uri: str) -> Row:
    """`row` with the newest `sgpo evaluate` results (AE2 LC/WR, Arena-Hard) of the model, and their settings."""
    ev = evaluations_of(store, model_hash)
    if a := ev.get("alpaca_eval"):
        row.lc, row.lc_se, row.wr, row.wr_se = (
            a.get("lc_win_rate"),
            a.get("lc_standard_error"),
            a.get("win_rate"),
            a.get("standard_error"),
        )
        if a.get("lc_note"):
            row.notes.append(a["lc_note"])
        row.settings["alpaca_eval"] = settings_of("alpaca_eval", a)
        row.ae_length = a.get("avg_length")
    if h := ev.get("arena_hard"):
        row.arena_hard, row.arena_hard_ci = h.get("score"), h.get("ci")
        row.settings["arena_hard"] = settings_of("arena_hard", h)
    if m := ev.get("mt_bench"):
        row.mt_bench = {
            k: m[k] for k in ("score_turn_1", "score_turn_2", "score") if m.get(k) is not None
        }
    if lm := ev.get("lm_eval"):
        # lm-eval's scores are fractions; the papers print percentages
        row.lm_eval = {
            task: 100 * v for task, v in (lm.get("headline") or {}).items() if v is not None
        }
    if not ev:
        row.notes.append(
            f"no sgpo evaluate run of {model_uri} in the store (AlpacaEval, Arena-Hard, MT-Bench, "
            "lm-eval)"
        )
    return row


def _num(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" ± {se:.2f}" if se is not None else "")


COLUMNS = [  # the SGPO paper's layout (Tables 3-7)
    "method",
    "AE2 LC (ours)",
    "AE2 WR (ours)",
    "Arena-Hard WR (95% CI) (ours)",
    "pipeline judge WR (ours)",
    "AE2 LC (paper)",
    "AE2 WR (paper)",
    "Arena-Hard (paper)",
    "status",
]
_SAPO_BENCHMARKS = [
    *OPEN_LLM_TASKS,
    "Open LLM avg",
    "IFEval",
    "MT-Bench T1",
    "MT-Bench T2",
    "MT-Bench avg",
    "AE2 LC",
    "AE2 WR",
    "AE2 length",
]
SAPO_COLUMNS = [  # the SAPO paper's layout (Tables 1-5): each benchmark, ours then the paper's
    "method",
    *(f"{b} ({who})" for b in _SAPO_BENCHMARKS for who in ("ours", "paper")),
    "pipeline judge WR (ours)",
    "status",
]


def _sapo_ours(r: Row) -> dict[str, str]:
    """The SAPO layout's own cells of a row."""
    tasks = {label: r.lm_eval.get(task) for label, task in OPEN_LLM_TASKS.items()}
    # the leaderboard's average: the mean of its six tasks, only when all six were run
    avg = sum(tasks.values()) / len(tasks) if all(v is not None for v in tasks.values()) else None
    mt = r.mt_bench
    return {
        **{f"{label} (ours)": _num(v) for label, v in tasks.items()},
        "Open LLM avg (ours)": _num(avg),
        "IFEval (ours)": _num(r.lm_eval.get("ifeval")),
        "MT-Bench T1 (ours)": _num(mt.get("score_turn_1")),
        "MT-Bench T2 (ours)": _num(mt.get("score_turn_2")),
        "MT-Bench avg (ours)": _num(mt.get("score")),
        "AE2 LC (ours)": _num(r.lc, r.lc_se),
        "AE2 WR (ours)": _num(r.wr, r.wr_se),
        "AE2 length (ours)": f"{r.ae_length:.0f}" if r.ae_length is not None else "-",
    }


def table_rows(rows: list[Row], layout: str | None = None) -> list[dict[str, str]]:
    """The rows as table cells; `layout` "sgpo" or "sapo" (default: "sapo" when every row is on a
    SAPO preset)."""
    layout = layout or ("sapo" if rows and all(r.preset in SAPO_PRESETS for r in rows) else "sgpo")
    marks = comparability(rows)
    out = []
    for i, r in enumerate(rows):
        paper = {f"{k} (paper)": v for k, v in paper_cells(r.preset, r.method).items()}
        judge = _num(r.judge_win_rate, r.judge_se) + (f" (n={r.judge_n})" if r.judge_n else "")
        status = r.status if not r.notes else f"{r.status}; " + "; ".join(r.notes)
        if layout == "sapo":
            cells = {**_sapo_ours(r), **paper}
            out.append(
                {
                    c: {
                        "method": r.method,
                        "pipeline judge WR (ours)": judge,
                        "status": status,
                    }.get(c, cells.get(c, "-"))
                    for c in SAPO_COLUMNS
                }
            )
        else:
            out.append(
                {
                    "method": r.method,
                    "AE2 LC (ours)": _num(r.lc, r.lc_se),
                    "AE2 WR (ours)": _num(r.wr, r.wr_se),
                    "Arena-Hard WR (95% CI) (ours)": f"{r.arena_hard:.2f} {r.arena_hard_ci or ''}".strip()
                    if r.arena_hard is not None
                    else "-",
                    "pipeline judge WR (ours)": judge,
                    "AE2 LC (paper)": paper.get("AE2 LC (paper)", "-"),
                    "AE2 WR (paper)": paper.get("AE2 WR (paper)", "-"),
                    "Arena-Hard (paper)": paper.get("Arena-Hard (paper)", "-"),
                    "status": status,
                }
            )
        for column in CELL_FIELDS:
            if column not in out[-1]:
                continue
            if why := marks.get((i, column)):
                out[-1][column] += " *"
                out[-1]["status"] += (
                    f"; * {column.removesuffix(' (ours)')} not comparable: " + ", ".join(why)
                )
    return out


def _columns(rows: list[dict[str, str]]) -> list[str]:
    return list(rows[0]) if rows else COLUMNS


def markdown(rows: list[dict[str, str]]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c].replace("|", "/") for c in columns) + " |" for r in rows]
    if any(r.get(c, "").endswith(" *") for r in rows for c in CELL_FIELDS):
        lines += [
            "",
            "\\* not comparable with the rest of its column (or the paper's setting): the status names "
            "the differing field",
        ]
    if any(c.endswith("(paper)") for c in columns):
        lines += ["", f"(paper): {SOURCE}; [T3] = the table a number comes from"]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
