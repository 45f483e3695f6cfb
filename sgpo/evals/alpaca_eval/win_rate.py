"""Raw and discrete win rates, as upstream ``metrics.winrate.get_winrate``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd


def _lengths(values: Iterable[Any]) -> np.ndarray:
    return np.asarray([len(v) if isinstance(v, str) else v for v in values], dtype=float)


def win_rate_metrics(
    preferences: Iterable[float | None],
    *,
    lengths_model: Iterable[int | str] | None = None,
    lengths_baseline: Iterable[int | str] | None = None,
) -> dict[str, Any]:
    """Head-to-head metrics exactly as upstream ``get_winrate`` (AbsoluteScoringRule + ZeroOneScoringRule).

    * ``0`` is the legacy encoding of a draw and is replaced by ``1.5``; ``None``/NaN and values
      outside ``[1, 2]`` are dropped (they do not count in ``n_total``).
    * ``win_rate = 100 * mean(pref - 1)``, ``standard_error = 100 * sem(pref - 1)`` (ddof=1).
    * ``n_wins = #(pref > 1.5)``, ``n_wins_base = #(pref < 1.5)``, ``n_draws = #(pref == 1.5)``.
    * ``discrete_win_rate``: each preference rounded to 1 or 2, exact 1.5 kept as a draw worth 1/2,
      i.e. ``100 * (n_wins + n_draws / 2) / n_total`` for preferences in ``[1, 2]`` (upstream rounds
      before filtering, so out-of-range values such as 2.4 still count there; replicated).
    * ``avg_length`` (when ``lengths_model`` is given): ``int(mean(len(model output)))`` as the
      leaderboard column (characters); items may be strings (their ``len`` is used) or lengths.
      ``avg_length_baseline`` likewise for ``lengths_baseline``.
    """
    raw = pd.Series(list(preferences), dtype=object)
    p = pd.to_numeric(raw, errors="coerce").astype(float)
    p = p.replace({0.0: 1.5})
    n_draws = int((p == 1.5).sum())
    valid = p[(p >= 1) & (p <= 2)] - 1  # NaN fails both comparisons -> dropped
    n_total = int(len(valid))
    n_wins = int((valid > 0.5).sum())
    n_wins_base = int((valid < 0.5).sum())

    # ZeroOneScoringRule: 1.5 (and legacy 0) -> draw, otherwise round half-to-even *before* the
    # [1, 2] validity filter (so e.g. 2.4 counts as a model win there, and 0.3 as a draw)
    z = pd.to_numeric(raw, errors="coerce").astype(float).replace({1.5: 0.0}).round()
    z = z.replace({0.0: 1.5})
    discrete = (z[(z >= 1) & (z <= 2)] - 1).to_numpy()
    out: dict[str, Any] = {
        "win_rate": float(valid.mean() * 100) if n_total else float("nan"),
        "standard_error": float(valid.sem() * 100) if n_total > 1 else float("nan"),
        "n_wins": n_wins,
        "n_wins_base": n_wins_base,
        "n_draws": n_draws,
        "n_total": n_total,
        "discrete_win_rate": float(discrete.mean() * 100) if len(discrete) else float("nan"),
    }
    if lengths_model is not None:
        out["avg_length"] = int(np.mean(_lengths(lengths_model)))
    if lengths_baseline is not None:
        out["avg_length_baseline"] = int(np.mean(_lengths(lengths_baseline)))
    return out
