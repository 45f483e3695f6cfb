"""Arena-Hard v0.1 scoring: judge-label parsing, battles, Bradley-Terry (MLE Elo), bootstrap CIs.

Faithful re-implementation of lm-sys/arena-hard-auto (v0.1 era, the code that produced the
2024-07-31 leaderboard), there being no installable package for it:

* ``gen_judgment.get_score`` -> :func:`get_score` / :func:`parse_label`: ``re.findall`` of the judge
  config's ``regex_pattern`` (``\\[\\[([AB<>=]+)\\]\\]``); no match -> ``None`` and "try again"
  (upstream then asks the judge to continue, up to ``number_of_judgment_attempts``); exactly one
  *distinct* match (repeats allowed) -> that label; several distinct labels -> ``None`` (no retry).
* ``show_result.get_battles_from_judgment`` -> :func:`battles_from_judgments`: game 1 has
  A = baseline, B = model; game 2 is swapped. ``A>B``/``B>A`` give one battle row, ``A>>B``/``B>>A``
  give ``WEIGHT`` (3) identical rows, ``A=B`` one ``tie`` row; any other label (``None``, ``A<B``,
  ...) is skipped. Every row is stored as ``model_a = baseline``, ``model_b = model``.
* ``show_result.compute_mle_elo`` -> :func:`compute_mle_elo`: battles duplicated, ties counted as an
  A win in the first copy and a B win in the second, unpenalised ``LogisticRegression``
  (``fit_intercept=False``, ``tol=1e-8``) on ``+/- log(BASE)`` design, ``elo = SCALE * coef +
  INIT_RATING``, shifted so the baseline is exactly 1000.
* ``show_result.get_bootstrap_result`` -> :func:`bootstrap`: ``rounds`` resamples of the battle
  rows with replacement (``DataFrame.sample(frac=1, replace=True)`` under ``np.random.seed(42)``; we
  draw the same indices from ``np.random.RandomState(seed)``), MLE Elo on each. Upstream meant to
  pass the baseline to each bootstrap fit but never does (``kwargs[baseline_model] = ...`` keys the
  dict by the model *name*), so its bootstrap always anchors ``gpt-4-0314``; we anchor the requested
  baseline, which is identical for the default baseline.
* ``show_result`` main + ``predict_win_rate`` / ``get_win_rate_column`` -> :func:`score`: the score is
  the predicted win rate (%) vs the baseline from the point-estimate Elo; the 95% CI converts the
  2.5th / 97.5th percentiles (``np.percentile``, linear interpolation) of the bootstrap *Elo* into win
  rates the same way. Upstream rounds to 2 decimals for display; we return full precision.

Default bootstrap seed is 42 like upstream, so results for identical inputs are identical.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_PATTERNS",
    "battles_from_judgments",
    "bootstrap",
    "compute_mle_elo",
    "format_ci",
    "get_score",
    "load_judgments",
    "parse_label",
    "percentile_interval",
    "predict_win_rate",
    "score",
]

DEFAULT_BASELINE = "gpt-4-0314"
# config/judge_config.yaml (arena-hard-v0.1): regex_pattern
DEFAULT_PATTERNS: tuple[str, ...] = (r"\[\[([AB<>=]+)\]\]",)
DEFAULT_WEIGHT = 3
DEFAULT_SEED = 42  # show_result.py: np.random.seed(42)

# game 1: A = baseline, B = model; game 2: A = model, B = baseline
_GAME1 = {
    "A=B": ("tie", 1),
    "A>B": ("model_a", 1),
    "A>>B": ("model_a", None),
    "B>A": ("model_b", 1),
    "B>>A": ("model_b", None),
}
_GAME2 = {
    "A=B": ("tie", 1),
    "A>B": ("model_b", 1),
    "A>>B": ("model_b", None),
    "B>A": ("model_a", 1),
    "B>>A": ("model_a", None),
}


# --------------------------------------------------------------------------------------------------
# Judge labels
# --------------------------------------------------------------------------------------------------
def get_score(
    judgment: str, patterns: Sequence[str | re.Pattern] = DEFAULT_PATTERNS
) -> tuple[str | None, bool]:
    """Upstream ``get_score(judgment, pattern, pairwise=True)``: ``(label, try_again)``.

    ``try_again`` is True only when no pattern matched at all (upstream then prompts the judge to
    "continue your judgment and finish by outputting a final verdict label"). With several patterns
    (upstream v0.1 has one), the first pattern that matches anything decides.
    """
    for pattern in patterns:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        matches = [m for m in regex.findall(judgment) if m != ""]
        if len(set(matches)) == 0:
            continue
        if len(set(matches)) == 1:
            return matches[0].strip("\n"), False
        return None, False
    return None, True


def parse_label(
    judgment_text: str, patterns: Sequence[str | re.Pattern] = DEFAULT_PATTERNS
) -> str | None:
    """The verdict label (e.g. ``"A>>B"``) of a judgment, or ``None`` if missing or conflicting."""
    if judgment_text is None:
        return None
    return get_score(judgment_text, patterns)[0]


# --------------------------------------------------------------------------------------------------
# Loading and battles
# --------------------------------------------------------------------------------------------------
def load_judgments(path: str | Path) -> list[dict[str, Any]]:
    """Read an official judgment ``.jsonl`` (one question per line: ``question_id``, ``model``,
    ``judge``, ``games`` = two dicts with ``user_prompt``, ``judgment``, ``score``).

    A directory is read like upstream (all ``*.jsonl`` files in it, sorted).
    """
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    records: list[dict[str, Any]] = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def _flatten_records(records: Mapping[str, Iterable[Mapping]] | Iterable[Mapping]) -> list[Mapping]:
    if isinstance(records, Mapping):
        out: list[Mapping] = []
        for model, recs in records.items():
            for rec in recs:
                out.append(rec if "model" in rec else {**rec, "model": model})
        return out
    return list(records)


def _game_label(game: Any, reparse: bool, patterns: Sequence[str]) -> str | None:
    if not isinstance(game, Mapping):
        return None
    if reparse and isinstance(game.get("judgment"), str):
        return parse_label(game["judgment"], patterns)
    return game.get("score")


def battles_from_judgments(
    records: Mapping[str, Iterable[Mapping]] | Iterable[Mapping],
    baseline: str = DEFAULT_BASELINE,
    weight: int = DEFAULT_WEIGHT,
    *,
    first_game_only: bool = False,
    reparse: bool = False,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
) -> pd.DataFrame:
    """Battle rows exactly as upstream ``get_battles_from_judgment`` (columns ``question_id``,
    ``model_a`` (always the baseline), ``model_b``, ``winner`` in {model_a, model_b, tie}).

    ``records`` is a list of judgment records (each with ``model``) or a mapping model -> records.
    By default the stored ``games[i]["score"]`` is used, as upstream; ``reparse=True`` re-parses
    ``games[i]["judgment"]`` with :func:`parse_label` instead.
    """
    rows: list[dict[str, Any]] = []
    for rec in _flatten_records(records):
        qid = rec.get("question_id", rec.get("uid"))
        games = rec.get("games") or []
        for game_idx, table in ((0, _GAME1), (1, _GAME2)):
            if game_idx == 1 and first_game_only:
                break
            if game_idx >= len(games):
                continue
            label = _game_label(games[game_idx], reparse, patterns)
            if label not in table:
                continue  # upstream: weight = 0 -> nothing appended
            winner, w = table[label]
            n = weight if w is None else w
            rows.extend(
                {"question_id": qid, "model_a": baseline, "model_b": rec["model"], "winner": winner}
                for _ in range(n)
            )
    return pd.DataFrame(rows, columns=["question_id", "model_a", "model_b", "winner"])


# --------------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------------
def _unpenalised_logistic_regression():
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (
        int("".join(c for c in part if c.isdigit()) or 0)
        for part in sklearn.__version__.split(".")[:2]
    )
    if (major, minor) >= (
        1,
        8,
    ):  # `penalty` deprecated in 1.8; C=inf is the documented equivalent of None
        return LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    return LogisticRegression(fit_intercept=False, penalty=None, tol=1e-8)


def compute_mle_elo(
    battles: pd.DataFrame,
    SCALE: float = 400,
    BASE: float = 10,
    INIT_RATING: float = 1000,
    baseline_model: str = DEFAULT_BASELINE,
) -> pd.Series:
    """Upstream ``compute_mle_elo``: Bradley-Terry MLE Elo (Series sorted descending)."""
    models = pd.concat([battles["model_a"], battles["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)

    df = pd.concat([battles, battles], ignore_index=True)  # duplicate battles
    p = len(models.index)
    n = df.shape[0]

    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]].to_numpy()] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]].to_numpy()] = -math.log(BASE)

    # one A win => two A wins
    Y = np.zeros(n)
    Y[(df["winner"] == "model_a").to_numpy()] = 1.0

    # one tie => one A win + one B win
    tie_idx = ((df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")).to_numpy().copy()
    tie_idx[len(tie_idx) // 2 :] = False
    Y[tie_idx] = 1.0

    if np.unique(Y).size < 2:
        # Every battle won by the same side (e.g. a bootstrap resample of a tiny judgment set without
        # its only tie). The MLE is at infinity and sklearn (hence upstream) raises; we return the
        # limit as a finite rating 12 * SCALE below, i.e. a predicted win rate of BASE**-12 (~0%).
        always_loses = set(battles["model_b"] if Y[0] == 1.0 else battles["model_a"])
        always_loses -= set(battles["model_a"] if Y[0] == 1.0 else battles["model_b"])
        elo_scores = np.array(
            [INIT_RATING - (12 * SCALE if m in always_loses else 0.0) for m in models.index]
        )
    else:
        lr = _unpenalised_logistic_regression()
        lr.fit(X, Y)
        elo_scores = SCALE * lr.coef_[0] + INIT_RATING
    if baseline_model in models.index:  # anchor: baseline = 1000
        elo_scores += 1000 - elo_scores[models[baseline_model]]
    return pd.Series(elo_scores, index=models.index).sort_values(ascending=False)


def predict_win_rate(
    elo_ratings: Mapping[str, float],
    SCALE: float = 400,
    BASE: float = 10,
    INIT_RATING: float = 1000,
) -> pd.DataFrame:
    """Upstream ``predict_win_rate``: table ``[a, b] = P(a beats b) = 1 / (1 + BASE ** ((elo_b - elo_a) / SCALE))``
    (rows ``model_a``, columns ``model_b``, NaN diagonal)."""
    names = sorted(elo_ratings.keys())
    wins: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(lambda: 0))
    for a in names:
        for b in names:
            ea = 1 / (1 + BASE ** ((elo_ratings[b] - elo_ratings[a]) / SCALE))
            wins[a][b] = ea
            wins[b][a] = 1 - ea
    data = {a: [wins[a][b] if a != b else np.nan for b in names] for a in names}
    df = pd.DataFrame(data, index=names)
    df.index.name = "model_a"
    df.columns.name = "model_b"
    return df.T


def _win_rate_vs_baseline(elo: Mapping[str, float], baseline: str) -> dict[str, float]:
    """Upstream ``get_win_rate_column`` without the display rounding (baseline itself -> 50%)."""
    table = predict_win_rate(dict(elo))
    col = table[baseline].fillna(0.5) * 100
    return {str(k): float(v) for k, v in col.items()}


def bootstrap(
    battles: pd.DataFrame,
    rounds: int = 100,
    seed: int | None = DEFAULT_SEED,
    *,
    baseline_model: str = DEFAULT_BASELINE,
    func_compute_elo=compute_mle_elo,
) -> pd.DataFrame:
    """Upstream ``get_bootstrap_result``: one row of Elo ratings per resample, columns sorted by median.

    ``seed`` seeds a private ``np.random.RandomState`` that draws the same indices as upstream's
    ``np.random.seed(seed)`` + ``battles.sample(frac=1.0, replace=True)``; ``None`` uses fresh entropy.
    """
    rng = np.random.RandomState(seed)
    n = len(battles)
    rows = []
    for _ in range(rounds):
        idx = rng.choice(n, size=n, replace=True)
        rows.append(func_compute_elo(battles.iloc[idx], baseline_model=baseline_model))
    df = pd.DataFrame(rows).reset_index(drop=True)
    return df[df.median().sort_values(ascending=False).index]


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """``(np.percentile(v, 2.5), np.percentile(v, 97.5))`` for ``level=0.95`` (linear interpolation)."""
    tail = (1 - level) / 2 * 100
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, tail)), float(np.percentile(arr, 100 - tail))


def format_ci(score_value: float, lower: float, upper: float) -> str:
    """The leaderboard CSV ``CI`` column: ``"(-{score-lower:.2f}, +{upper-score:.2f})"``."""
    return f"(-{(score_value - lower):.2f}, +{(upper - score_value):.2f})"


def score(
    records_by_model: Mapping[str, Iterable[Mapping]] | Iterable[Mapping],
    baseline: str = DEFAULT_BASELINE,
    rounds: int = 100,
    seed: int | None = DEFAULT_SEED,
    *,
    weight: int = DEFAULT_WEIGHT,
    first_game_only: bool = False,
    reparse: bool = False,
) -> dict[str, dict[str, Any]]:
    """Arena-Hard score per model as upstream ``show_result.py`` (win-rate mode).

    Returns ``{model: {"score", "ci_low", "ci_high", "elo", "n", "n_battles"}}`` for every model but
    the baseline: ``score`` = predicted win rate (%) vs the baseline, ``ci_low``/``ci_high`` = the 95%
    bootstrap interval (``rounds`` resamples, ``seed``) mapped to win rates, ``n`` = number of
    judged questions (records), ``n_battles`` = weighted battle rows. All models' battles are fitted
    jointly, as upstream does with every judgment file of a judge.
    """
    records = _flatten_records(records_by_model)
    battles = battles_from_judgments(
        records, baseline=baseline, weight=weight, first_game_only=first_game_only, reparse=reparse
    )
    if battles.empty:
        raise ValueError("no usable battles: every judgment label is missing or unrecognised")
    elo = compute_mle_elo(battles, baseline_model=baseline)
    boot = (
        bootstrap(battles, rounds=rounds, seed=seed, baseline_model=baseline)
        if rounds > 0
        else None
    )

    point = _win_rate_vs_baseline(elo.to_dict(), baseline)
    if boot is not None:
        lower = {m: float(np.percentile(boot[m], 2.5)) for m in elo.index}
        upper = {m: float(np.percentile(boot[m], 97.5)) for m in elo.index}
        low_wr = _win_rate_vs_baseline(lower, baseline)
        high_wr = _win_rate_vs_baseline(upper, baseline)

    n_questions: dict[str, int] = defaultdict(int)
    for rec in records:
        n_questions[rec["model"]] += 1
    n_battles = battles.groupby("model_b").size().to_dict()

    out: dict[str, dict[str, Any]] = {}
    for model in sorted(set(n_questions) | set(battles["model_b"])):
        if model == baseline:
            continue
        if model not in elo.index:
            out[model] = {
                "score": None,
                "ci_low": None,
                "ci_high": None,
                "elo": None,
                "n": n_questions.get(model, 0),
                "n_battles": 0,
            }
            continue
        out[model] = {
            "score": point[model],
            "ci_low": low_wr[model] if boot is not None else None,
            "ci_high": high_wr[model] if boot is not None else None,
            "elo": float(elo[model]),
            "n": int(n_questions.get(model, 0)),
            "n_battles": int(n_battles.get(model, 0)),
        }
    return out
