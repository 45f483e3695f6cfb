"""The papers' figures, drawn from a run's own artifacts (matplotlib, headless Agg, PNG bytes).

    Fig. 3   normalised edit distance, improved answer vs response B (the policy's)   annotate
    Fig. 4   normalised edit distance, improved answer vs response A (the reference)  annotate
    Fig. 5   perplexity under pi_sft per response type, Tukey fences, kept/dropped    ppl_filter (+ manifest `fences`)
    Table 1  pairwise judge checks of the improved data (win rate, SE)               pairwise[imp_vs_*] (checks / evaluation)
    Fig. 8   the self-improver's refinement y+ vs pi_sft's refinement and vs y_sft      pairwise[refined_vs_*] (checks)
    Fig. 9   perplexity of the pairs' chosen / rejected answers under the DPO reference   dpo's reference_logps artifact
             (pi_imp in SGPO: the improver)
    Fig. 10  refinement win rate by recipe (SGPO, All-Ref, No-Ref, ...), several runs  `sgpo report RUN RUN ...`
    training curves (loss, reward margin / accuracy, lr) per training stage          manifest `train_history`
    stage time, LLM calls (sent vs from the journal), cost, cache hits               the run's stage list + manifests
    judge result (win rate vs the baseline, SE)                                      judge / alpaca_eval_judge / arena_hard_judge
    SAPO loss / reward-margin / lr curves                                            sapo manifest `train_history`
    SAPO replay buffer: use counts, producing step, EMA / reference updates          sapo `buffer.parquet` + `last_metrics`

Each figure has a pure data-preparation function (unit-tested on hand-made tables: bin counts,
fences taken from the manifest, never recomputed) and a drawing function. `make_figures(run)`
draws those whose stage ran in this recipe; a stage that is not in the run leaves its figure
out (no empty plots), and a figure that cannot be made is returned as missing, with the reason.
The run is read through `RunArtifacts`, so the report stage, `sgpo report` and the tests use
the same code whatever the store.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

EDIT_BINS = 20
PPL_BINS = 30
TRAINING_STAGES = ("sft", "improver_sft", "dpo", "sapo")
TRAINING_SERIES = (  # (panel, history keys that go on it, y label)
    ("loss", ("loss",), "training loss (nats / token)"),
    ("reward", ("rewards/margins", "rewards/accuracies"), "reward margin (nats) / accuracy (0-1)"),
    ("lr", ("learning_rate",), "learning rate"),
)


# --------------------------------------------------------------------------------------------------
# What a figure reads: the run's stages, their manifests and tables
# --------------------------------------------------------------------------------------------------
@dataclass
class StageEntry:
    """One stage of a run: its label in the run (`dpo[2]`), ran or cached, its artifact."""

    label: str
    stage: str
    uri: str
    content_hash: str = ""
    status: str = ""  # ran | cached | "" (unknown: a report built from lineage)
    seconds: float | None = None  # this run's wall time (None: unknown)
    summary: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunArtifacts:
    """The stages of one run plus a way to read a table artifact's rows (by label)."""

    stages: list[StageEntry]
    read_rows: Callable[[StageEntry], list[dict[str, Any]]]
    title: str = ""
    # rows of a Parquet file beside an artifact (e.g. sapo's buffer.parquet); None: not readable
    read_side_rows: Callable[[StageEntry, str], list[dict[str, Any]]] | None = None

    def find(self, stage: str) -> list[StageEntry]:
        return [s for s in self.stages if s.stage == stage]

    def one(self, stage: str) -> StageEntry | None:
        found = self.find(stage)
        return found[-1] if found else None


@dataclass
class Figure:
    id: str
    title: str
    source: str  # the label of the stage (or "run") it is drawn from
    source_uri: str | None = None
    png: bytes | None = None
    missing: str | None = None  # the reason it could not be made
    counts: dict[str, Any] = field(
        default_factory=dict
    )  # what the legend says, for tests and tables


# --------------------------------------------------------------------------------------------------
# Data preparation (pure)
# --------------------------------------------------------------------------------------------------
def histogram(
    values: Sequence[float], bins: int, lo: float, hi: float
) -> tuple[list[int], list[float]]:
    """Counts per bin over [lo, hi] (the last bin closed, numpy's convention), and the edges."""
    import numpy as np

    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(lo, hi))
    return [int(c) for c in counts], [float(e) for e in edges]


def edit_distance_data(
    rows: Iterable[dict[str, Any]], column: str, bins: int = EDIT_BINS
) -> dict[str, Any]:
    """Histogram of a normalised edit-distance column over [0, 1]; rows whose improved answer is
    missing (None: the call was invalid) are counted, not plotted."""
    rows = list(rows)
    if rows and column not in rows[0]:
        raise KeyError(f"the annotate table has no column {column!r}")
    values = [float(r[column]) for r in rows if r.get(column) is not None]
    if not values:
        raise ValueError(f"no {column} values (every improved answer is missing)")
    counts, edges = histogram(values, bins, 0.0, 1.0)
    return {
        "values": values,
        "n": len(values),
        "missing": len(rows) - len(values),
        "counts": counts,
        "edges": edges,
        "mean": sum(values) / len(values),
        "median": _median(values),
    }


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def perplexity_data(
    rows: Iterable[dict[str, Any]], fences: dict[str, dict[str, Any]], bins: int = PPL_BINS
) -> dict[str, dict[str, Any]]:
    """Per response type: kept/dropped perplexities (the table's own `kept` flag), their counts
    per bin on a common range that includes the fences, and the fences as the manifest records
    them (never recomputed: the figure shows where the stage cut)."""
    if not fences:
        raise ValueError("the ppl_filter manifest records no fences")
    rows = list(rows)
    out: dict[str, dict[str, Any]] = {}
    for t, f in fences.items():
        if not isinstance(f, dict) or "low" not in f or "high" not in f:
            continue
        sel = [r for r in rows if r.get("target_type") == t and r.get("ppl") is not None]
        kept = [float(r["ppl"]) for r in sel if r.get("kept")]
        dropped = [float(r["ppl"]) for r in sel if not r.get("kept")]
        low, high = float(f["low"]), float(f["high"])
        every = kept + dropped
        lo = min([*every, low]) if every else low
        hi = max([*every, high]) if every else high
        pad = (hi - lo) * 0.02 or 1.0
        lo, hi = lo - pad, hi + pad
        ck, edges = histogram(kept, bins, lo, hi)
        cd, _ = histogram(dropped, bins, lo, hi)
        out[t] = {
            "kept": kept,
            "dropped": dropped,
            "n_kept": len(kept),
            "n_dropped": len(dropped),
            "low": low,
            "high": high,
            "q1": f.get("q1"),
            "q3": f.get("q3"),
            "edges": edges,
            "counts_kept": ck,
            "counts_dropped": cd,
        }
    if not out:
        raise ValueError("the ppl_filter manifest's fences name no response type with low/high")
    return out


def training_curves(history: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of the per-step trainer logs; the final summary entry (the
    one with `train_loss`) and non-finite values are left out."""
    keys = {k for _, ks, _ in TRAINING_SERIES for k in ks}
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        if "train_loss" in entry or "step" not in entry:
            continue
        for k in keys:
            v = entry.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.setdefault(k, []).append((int(entry["step"]), float(v)))
    for k in out:
        out[k].sort()
    return out


def stage_costs(stages: Sequence[StageEntry]) -> list[dict[str, Any]]:
    """One row per stage: this run's status and seconds, the compute seconds its manifest records
    (when it was made), paid-LLM calls (sent vs answered from the journal), tokens and cost."""
    rows = []
    for s in stages:
        sm = s.summary or {}
        sent = sm.get("sent", sm.get("calls_sent"))
        journal = sm.get("from_journal", sm.get("calls_from_journal"))
        rows.append(
            {
                "label": s.label,
                "status": s.status or "?",
                "seconds": s.seconds,
                "compute_seconds": s.manifest.get("seconds") if s.manifest else None,
                "llm_sent": sent if isinstance(sent, int) else None,
                "llm_from_journal": journal if isinstance(journal, int) else None,
                "tokens": _sum_ints(sm.get("prompt_tokens"), sm.get("completion_tokens")),
                "cost_usd": sm.get("cost_usd")
                if isinstance(sm.get("cost_usd"), (int, float))
                else None,
            }
        )
    return rows


def _sum_ints(*vals: Any) -> int | None:
    nums = [v for v in vals if isinstance(v, int) and not isinstance(v, bool)]
    return sum(nums) if nums else None


def cache_hits(stages: Sequence[StageEntry]) -> dict[str, int]:
    out = {"ran": 0, "cached": 0}
    for s in stages:
        if s.status in out:
            out[s.status] += 1
    return out


def win_rate_rows(run: RunArtifacts) -> list[dict[str, Any]]:
    """The judged numbers of the run: (label, win rate %, SE or CI half-width, n) per judge stage."""
    rows = []
    for s in run.stages:
        sm = s.summary or {}
        if s.stage in ("judge", "alpaca_eval_judge", "pairwise") and isinstance(
            sm.get("win_rate"), (int, float)
        ):
            name = {
                "judge": "judge (final policy vs baseline)",
                "alpaca_eval_judge": "AlpacaEval 2.0 WR",
            }.get(s.stage, s.label)
            rows.append(
                {
                    "label": name,
                    "value": float(sm["win_rate"]),
                    "se": _num(sm.get("standard_error")),
                    "n": sm.get("n_labelled"),
                    "of": sm.get("n"),
                    "stage": s.label,
                    "model_column": sm.get("model_column"),
                    "baseline_column": sm.get("baseline_column"),
                }
            )
            if s.stage == "alpaca_eval_judge" and isinstance(sm.get("lc_win_rate"), (int, float)):
                rows.append(
                    {
                        "label": "AlpacaEval 2.0 LC WR",
                        "value": float(sm["lc_win_rate"]),
                        "se": _num(sm.get("lc_standard_error")),
                        "n": sm.get("n_labelled"),
                        "of": sm.get("n"),
                        "stage": s.label,
                    }
                )
        elif s.stage == "arena_hard_judge" and isinstance(sm.get("score"), (int, float)):
            lo, hi = _num(sm.get("ci_low")), _num(sm.get("ci_high"))
            half = (hi - lo) / 2 if lo is not None and hi is not None else None
            rows.append(
                {
                    "label": "Arena-Hard v0.1 score",
                    "value": float(sm["score"]),
                    "se": half,
                    "ci": (lo, hi),
                    "n": sm.get("n_questions"),
                    "of": sm.get("n_questions"),
                    "stage": s.label,
                }
            )
    return rows


def refinement_rows(judged: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fig. 8: the refinement checks among a run's judged rows (pairwise stages whose model column is
    a pairs table's `chosen`, the refinement y+), each with its round (`.rN` in the check's name; 1
    without) and what it is compared with ('initial' = the initial policy's refinement of the same
    answer, the paper's comparison; 'y_sft' = the SFT reference; 'y' = the unrefined answer, in runs
    made before the initial policy's refinements were)."""
    versus = {"refinement": "initial", "reference": "y_sft", "rejected": "y"}
    out = []
    for r in judged:
        if r.get("model_column") != "chosen" or r.get("baseline_column") not in versus:
            continue
        label = r["stage"]
        name = label[label.index("[") + 1 : -1] if "[" in label else label
        rnd = (
            int(name.rsplit(".r", 1)[1])
            if ".r" in name and name.rsplit(".r", 1)[1].isdigit()
            else 1
        )
        out.append({**r, "round": rnd, "versus": versus[r["baseline_column"]]})
    return sorted(out, key=lambda r: (r["round"], r["versus"]))


def perplexity_by_type_data(rows: Iterable[dict[str, Any]], bins: int = PPL_BINS) -> dict[str, Any]:
    """Fig. 9: per-token perplexity exp(-log p / tokens) of each pair's chosen and rejected answer under
    the reference, from the reference log-prob table (summed log-probs and the scored token counts);
    pairs TRL dropped (NaN log-probs) or with no scored token are counted, not plotted. Counts on one
    log-spaced range shared by both types."""
    rows = list(rows)
    if rows and "chosen_tokens" not in rows[0]:
        raise KeyError(
            "the reference log-prob table has no token counts (made before they were recorded)"
        )
    values: dict[str, list[float]] = {"chosen": [], "rejected": []}
    skipped = 0
    for r in rows:
        for t in values:
            lp, n = r.get(f"ref_{t}_logps"), r.get(f"{t}_tokens")
            if isinstance(lp, (int, float)) and math.isfinite(lp) and isinstance(n, int) and n > 0:
                values[t].append(math.exp(-lp / n))
            else:
                skipped += 1
    every = values["chosen"] + values["rejected"]
    if not every:
        raise ValueError("no pair has a finite reference log-prob")
    lo, hi = math.log10(min(every)), math.log10(max(every))
    pad = (hi - lo) * 0.02 or 0.05
    edges = [10 ** (lo - pad + i * (hi - lo + 2 * pad) / bins) for i in range(bins + 1)]
    out: dict[str, Any] = {"edges": edges, "skipped": skipped}
    import numpy as np

    for t, v in values.items():
        counts = (
            np.histogram(np.asarray(v, dtype=float), bins=np.asarray(edges))[0] if v else [0] * bins
        )
        out[t] = {
            "values": v,
            "n": len(v),
            "counts": [int(c) for c in counts],
            "median": _median(v) if v else None,
        }
    return out


def sapo_buffer_data(
    rows: Iterable[dict[str, Any]], last_metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The SAPO replay buffer as the run ended: how many entries were drawn 0, 1, 2, ... times, how
    many entries each producing step left in it, and the run's last EMA / reference / buffer numbers."""
    rows = list(rows)
    if not rows:
        raise ValueError("the replay buffer is empty")
    uses = [int(r["uses"]) for r in rows]
    use_counts = {u: uses.count(u) for u in range(max(uses) + 1)}
    steps = sorted({int(r["step"]) for r in rows if r.get("step") is not None})
    by_step = {st: sum(1 for r in rows if r.get("step") == st) for st in steps}
    lm = last_metrics or {}
    return {
        "n": len(rows),
        "use_counts": use_counts,
        "mean_uses": sum(uses) / len(uses),
        "by_step": by_step,
        "ema_updates": _num(lm.get("ema_updates")),
        "reference_updates": _num(lm.get("reference_updates")),
    }


def _num(v: Any) -> float | None:
    return (
        float(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        else None
    )


# --------------------------------------------------------------------------------------------------
# Drawing (matplotlib Agg)
# --------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def draw_edit_distance(data: dict[str, Any], title: str, versus: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    edges = data["edges"]
    ax.bar(
        edges[:-1],
        data["counts"],
        width=[b - a for a, b in zip(edges, edges[1:])],
        align="edge",
        color="#4C72B0",
        edgecolor="white",
        label=f"improved vs {versus} (n={data['n']}"
        + (f", {data['missing']} missing" if data["missing"] else "")
        + ")",
    )
    ax.axvline(data["mean"], color="#C44E52", linestyle="--", label=f"mean {data['mean']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised Levenshtein distance (0 = identical, 1 = all characters changed)")
    ax.set_ylabel("samples (count)")
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def draw_perplexity(data: dict[str, dict[str, Any]], title: str) -> bytes:
    plt = _plt()
    names = {"imp": "improved answers y_imp", "ext": "external answers y_ext"}
    fig, axes = plt.subplots(1, len(data), figsize=(6.0 * len(data), 4.0), squeeze=False)
    for ax, (t, d) in zip(axes[0], data.items()):
        edges = d["edges"]
        widths = [b - a for a, b in zip(edges, edges[1:])]
        ax.bar(
            edges[:-1],
            d["counts_kept"],
            width=widths,
            align="edge",
            color="#55A868",
            edgecolor="white",
            label=f"kept (n={d['n_kept']})",
        )
        ax.bar(
            edges[:-1],
            d["counts_dropped"],
            width=widths,
            align="edge",
            bottom=d["counts_kept"],
            color="#C44E52",
            edgecolor="white",
            label=f"dropped (n={d['n_dropped']})",
        )
        ax.axvline(
            d["low"],
            color="black",
            linestyle="--",
            label=f"fences {d['low']:.4g} .. {d['high']:.4g}",
        )
        ax.axvline(d["high"], color="black", linestyle="--")
        ax.set_xlabel("perplexity under pi_sft (exp of mean token NLL)")
        ax.set_ylabel("responses (count)")
        ax.set_title(names.get(t, t))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def draw_training(curves: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    plt = _plt()
    panels = [
        (name, [k for k in keys if k in curves], ylabel) for name, keys, ylabel in TRAINING_SERIES
    ]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (_name, keys, ylabel) in zip(axes[0], panels):
        for k in keys:
            steps, vals = zip(*curves[k])
            ax.plot(steps, vals, marker="o", markersize=3, label=f"{k} ({len(vals)} logged steps)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def draw_stage_costs(rows: list[dict[str, Any]], hits: dict[str, int], title: str) -> bytes:
    plt = _plt()
    with_llm = [r for r in rows if r["llm_sent"] is not None or r["llm_from_journal"] is not None]
    ncols = 2 if with_llm else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 0.35 * len(rows) + 1.8), squeeze=False)
    ax = axes[0][0]
    labels = [r["label"] for r in rows]
    this_run = all(r["seconds"] is not None for r in rows)
    secs = [(r["seconds"] if this_run else r["compute_seconds"]) or 0.0 for r in rows]
    colors = {"ran": "#4C72B0", "cached": "#8C8C8C"}
    ys = list(range(len(rows)))
    for status in ("ran", "cached", "?"):
        idx = [i for i, r in enumerate(rows) if r["status"] == status]
        if idx:
            n = hits.get(status, len(idx))
            name = {"ran": "ran", "cached": "cached (cache hit)", "?": "status unknown"}[status]
            ax.barh(
                [ys[i] for i in idx],
                [secs[i] for i in idx],
                color=colors.get(status, "#DD8452"),
                label=f"{name}: {n} stage{'s' if n != 1 else ''}",
            )
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlabel(
        "wall time in this run (s)"
        if this_run
        else "compute time when the artifact was made (s, manifest)"
    )
    ax.legend(fontsize=8)
    if with_llm:
        ax2 = axes[0][1]
        yl = list(range(len(with_llm)))
        sent = [r["llm_sent"] or 0 for r in with_llm]
        journal = [r["llm_from_journal"] or 0 for r in with_llm]
        ax2.barh(yl, sent, color="#DD8452", label=f"sent (paid): {sum(sent)} calls")
        ax2.barh(
            yl,
            journal,
            left=sent,
            color="#8C8C8C",
            label=f"from the journal (not repaid): {sum(journal)} calls",
        )
        cost = [r["cost_usd"] for r in with_llm if r["cost_usd"] is not None]
        tokens = [r["tokens"] for r in with_llm if r["tokens"] is not None]
        ax2.set_yticks(yl, [r["label"] for r in with_llm])
        ax2.invert_yaxis()
        ax2.set_xlabel("LLM calls (count)")
        extra = (f"cost ${sum(cost):.2f}" if cost else "cost n/a (no price configured)") + (
            f", {sum(tokens):,} tokens" if tokens else ""
        )
        ax2.set_title(extra, fontsize=9)
        ax2.legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def draw_win_rates(
    rows: list[dict[str, Any]],
    title: str,
    *,
    xlabel: str = "win rate vs the baseline (%)",
    legend: str = "win rate (error bar: SE; Arena-Hard: 95% CI)",
) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 0.6 * len(rows) + 1.8))
    ys = list(range(len(rows)))
    ax.barh(
        ys,
        [r["value"] for r in rows],
        xerr=[r["se"] or 0 for r in rows],
        color="#4C72B0",
        capsize=4,
        label=legend,
    )
    ax.set_yticks(
        ys,
        [
            f"{r['label']} (n={r['n']}"
            + (f" of {r['of']}" if r.get("of") not in (None, r["n"]) else "")
            + ")"
            for r in rows
        ],
    )
    ax.invert_yaxis()
    ax.axvline(50, color="black", linestyle=":", label="50% (tie with the baseline)")
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def draw_sapo_buffer(data: dict[str, Any], title: str) -> bytes:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.0, 3.8))
    uses = list(data["use_counts"])
    ax1.bar(
        uses,
        [data["use_counts"][u] for u in uses],
        color="#4C72B0",
        label=f"{data['n']} entries, mean {data['mean_uses']:.2f} draws",
    )
    ax1.set_xlabel("times drawn for a training step (count)")
    ax1.set_ylabel("buffer entries (count)")
    ax1.legend(fontsize=8)
    steps = list(data["by_step"])
    ax2.bar(
        steps,
        [data["by_step"][st] for st in steps],
        color="#55A868",
        label=f"entries by producing step ({len(steps)} steps)",
    )
    ax2.set_xlabel("optimizer step that generated the entry")
    ax2.set_ylabel("buffer entries (count)")
    extra = [
        f"{k.replace('_', ' ')} {int(data[k])}"
        for k in ("ema_updates", "reference_updates")
        if data[k] is not None
    ]
    if extra:
        ax2.set_title(", ".join(extra), fontsize=9)
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def draw_refinement(rows: list[dict[str, Any]], title: str) -> bytes:
    plt = _plt()
    rounds = sorted({r["round"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(rounds) + 2.5), 4.0))
    width = 0.38
    # the paper's two comparisons; a run made before the initial policy refined (versus 'y') keeps
    # its first bar
    first = (
        ("initial", "#4C72B0", "y+ vs the initial policy's refinement")
        if any(r["versus"] == "initial" for r in rows)
        else ("y", "#4C72B0", "y+ vs the policy's y (rejected)")
    )
    for k, (versus, color, what) in enumerate(
        (first, ("y_sft", "#DD8452", "y+ vs the SFT reference y_sft"))
    ):
        sel = {r["round"]: r for r in rows if r["versus"] == versus}
        xs = [i + (k - 0.5) * width for i, rd in enumerate(rounds) if rd in sel]
        if not xs:
            continue
        got = [sel[rd] for rd in rounds if rd in sel]
        n = ", ".join(f"n={r['n']}" for r in got)
        ax.bar(
            xs,
            [r["value"] for r in got],
            width,
            yerr=[r["se"] or 0 for r in got],
            capsize=4,
            color=color,
            label=f"{what} ({n})",
        )
    ax.axhline(50, color="black", linestyle=":", label="50% (no better, no worse)")
    ax.set_xticks(range(len(rounds)), [f"round {rd}" for rd in rounds])
    ax.set_ylim(0, 100)
    ax.set_ylabel("win rate of the refinement y+ (%, error bar: SE)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def draw_perplexity_by_type(data: dict[str, Any], title: str, model: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    edges = data["edges"]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    for t, color, what in (
        ("chosen", "#55A868", "chosen y+"),
        ("rejected", "#C44E52", "rejected y"),
    ):
        d = data[t]
        if not d["n"]:
            continue
        ax.bar(
            edges[:-1],
            d["counts"],
            width=widths,
            align="edge",
            color=color,
            alpha=0.55,
            edgecolor="white",
            label=f"{what} (n={d['n']}, median {d['median']:.3g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"perplexity under {model} (exp of mean token NLL, log scale)")
    ax.set_ylabel("answers (count)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title=f"{data['skipped']} not scored" if data["skipped"] else None)
    return _png(fig)


# --------------------------------------------------------------------------------------------------
# The figures of a run
# --------------------------------------------------------------------------------------------------
def _attempt(fig: Figure, make: Callable[[], tuple[bytes, dict[str, Any]]]) -> Figure:
    try:
        fig.png, fig.counts = make()
    except Exception as e:  # a figure that cannot be made is reported, never fatal
        fig.missing = f"{type(e).__name__}: {e}"
    return fig


def make_figures(
    run: RunArtifacts, *, edit_bins: int = EDIT_BINS, ppl_bins: int = PPL_BINS
) -> list[Figure]:
    """Every figure whose stage is in the run, in the papers' order."""
    figs: list[Figure] = []
    ann = run.one("annotate")
    if ann is not None:
        rows_cache: dict[str, list[dict[str, Any]]] = {}

        def ann_rows() -> list[dict[str, Any]]:
            if "rows" not in rows_cache:
                rows_cache["rows"] = run.read_rows(ann)
            return rows_cache["rows"]

        for fid, col, versus, number in (
            ("fig3_edit_vs_b", "norm_edit_imp_vs_b", "response B (policy answer y)", 3),
            ("fig4_edit_vs_a", "norm_edit_imp_vs_a", "response A (reference y_sft)", 4),
        ):
            title = f"Fig. {number}: edit distance of the improved answer to {versus}"

            def make(col=col, title=title, versus=versus):
                d = edit_distance_data(ann_rows(), col, edit_bins)
                return draw_edit_distance(d, title, versus.split(" (")[0]), {
                    "n": d["n"],
                    "missing": d["missing"],
                    "counts": d["counts"],
                }

            figs.append(_attempt(Figure(fid, title, ann.label, ann.uri), make))

    for ppl in run.find("ppl_filter"):
        title = "Fig. 5: perplexity of the improver's training targets under pi_sft, IQR fences"

        def make(ppl=ppl, title=title):
            fences = (ppl.manifest or {}).get("fences") or ppl.summary
            d = perplexity_data(run.read_rows(ppl), fences, ppl_bins)
            return draw_perplexity(d, title), {
                t: {
                    "kept": v["n_kept"],
                    "dropped": v["n_dropped"],
                    "low": v["low"],
                    "high": v["high"],
                }
                for t, v in d.items()
            }

        figs.append(
            _attempt(
                Figure(f"fig5_perplexity{_suffix(ppl.label)}", title, ppl.label, ppl.uri), make
            )
        )

    for s in run.stages:
        if s.stage not in TRAINING_STAGES:
            continue
        title = f"Training curves of {s.label} (loss, reward margin / accuracy, learning rate)"

        def make(s=s, title=title):
            history = (s.manifest or {}).get("train_history")
            if not history:
                raise ValueError(
                    "the manifest has no per-step train_history (made before it was recorded)"
                )
            curves = training_curves(history)
            if not curves:
                raise ValueError("train_history holds no loss / reward / lr entries")
            return draw_training(curves, title), {k: len(v) for k, v in curves.items()}

        figs.append(_attempt(Figure(f"train_{_slug(s.label)}", title, s.label, s.uri), make))

    for d in run.find("dpo"):
        uri = (d.manifest or {}).get("reference_logps")
        if not uri:
            continue  # a live reference (dpo.reference_logps=live): no log-prob table to draw from
        start = ((d.manifest or {}).get("parents") or {}).get("start") or {}
        model = {
            "improver_sft": "the improver pi_imp",
            "sft": "pi_sft",
            "dpo": "the previous round's policy",
        }.get(start.get("stage", ""), "the start model") + " (the DPO reference)"
        title = f"Fig. 9: perplexity of {d.label}'s chosen / rejected answers under {model.split(' (')[0]}"

        def make_ppl(uri=uri, title=title, model=model):
            entry = StageEntry(label="ref_logps", stage="ref_logps", uri=uri)
            data = perplexity_by_type_data(run.read_rows(entry), ppl_bins)
            return draw_perplexity_by_type(data, title, model), {
                t: {"n": data[t]["n"], "median": data[t]["median"]} for t in ("chosen", "rejected")
            }

        figs.append(
            _attempt(Figure(f"fig9_perplexity{_suffix(d.label)}", title, d.label, uri), make_ppl)
        )

    for sp in run.find("sapo"):
        title = (
            f"SAPO replay buffer of {sp.label}: use counts, producing step, EMA / reference updates"
        )

        def make_buffer(sp=sp, title=title):
            if run.read_side_rows is None:
                raise ValueError("this reader cannot open files beside an artifact")
            d = sapo_buffer_data(
                run.read_side_rows(sp, "buffer.parquet"), (sp.manifest or {}).get("last_metrics")
            )
            return draw_sapo_buffer(d, title), {
                "n": d["n"],
                "use_counts": d["use_counts"],
                "mean_uses": d["mean_uses"],
            }

        figs.append(
            _attempt(
                Figure(f"sapo_buffer{_suffix(sp.label)}", title, sp.label, sp.uri), make_buffer
            )
        )

    judged = win_rate_rows(run)
    refinement = refinement_rows(judged)
    refined_stages = {r["stage"] for r in refinement}
    pairwise = [
        r for r in judged if r["stage"].startswith("pairwise") and r["stage"] not in refined_stages
    ]
    benchmarks = [r for r in judged if not r["stage"].startswith("pairwise")]
    if benchmarks:
        title = "Judge result: win rate vs the baseline"
        figs.append(
            _attempt(
                Figure("judge", title, benchmarks[0]["stage"]),
                lambda: (
                    draw_win_rates(benchmarks, title),
                    {r["label"]: r["value"] for r in benchmarks},
                ),
            )
        )
    if pairwise:
        improved = all(r.get("model_column") == "imp" for r in pairwise)
        ptitle = (
            "Table 1: judge checks of the improved data y_imp (vs response B = y, vs response A = y_sft)"
            if improved
            else "Pairwise win rates (model column vs baseline column)"
        )
        figs.append(
            _attempt(
                Figure(
                    "table1_improved_data" if improved else "pairwise", ptitle, pairwise[0]["stage"]
                ),
                lambda: (
                    draw_win_rates(pairwise, ptitle),
                    {r["label"]: r["value"] for r in pairwise},
                ),
            )
        )
    if refinement:
        rtitle = (
            "Fig. 8: win rate of the self-improver's refinement y+ over the initial policy's "
            "refinement and over y_sft"
        )
        figs.append(
            _attempt(
                Figure("fig8_refinement", rtitle, refinement[0]["stage"]),
                lambda: (
                    draw_refinement(refinement, rtitle),
                    {f"round {r['round']} vs {r['versus']}": r["value"] for r in refinement},
                ),
            )
        )

    if run.stages:
        title = "Stages: time, cache hits, paid LLM calls and cost"

        def make_costs():
            rows, hits = stage_costs(run.stages), cache_hits(run.stages)
            return draw_stage_costs(rows, hits, title), hits

        figs.append(_attempt(Figure("stages", title, "run"), make_costs))
    return figs


def _suffix(label: str) -> str:
    return "" if "[" not in label else "_" + _slug(label[label.index("[") :])


def _slug(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
