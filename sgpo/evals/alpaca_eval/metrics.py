"""AlpacaEval 2.0 metrics: raw win rate, discrete win rate and length-controlled (LC) win rate.

Implementation choice
---------------------
The ``alpaca_eval`` PyPI package (0.6.6) *could* be installed next to our pins
(``pip install --dry-run -c constraints.txt alpaca_eval`` only adds alpaca_eval, fire, patsy,
termcolor and tiktoken and changes none of torch / prefect / transformers / openai / datasets /
fastapi), but it is **not** used as a dependency:

* ``import alpaca_eval`` (0.6.6) fails in our environment: ``alpaca_eval/utils.py`` imports
  ``pkg_resources``, which the recent setuptools in our venv (84.2) no longer ships;
* its length-controlled entry point (``metrics.get_length_controlled_winrate``) unconditionally
  calls ``hf_hub_download`` for ``df_gamed.csv`` and ``instruction_difficulty.csv`` inside the
  function, so it cannot run offline or on injected data (our tests and air-gapped runs);
* it flips the process-global ``sklearn.set_config(enable_metadata_routing=True)`` and writes GLM
  weights into its own site-packages folder by default;
* the maths we need is ~150 lines, and the judge stage of our pipeline needs the logprob rule as a
  small, dependency-free function anyway.

So this module re-implements, line by line, the official code of tatsu-lab/alpaca_eval:

* ``completion_parsers.logprob_parser`` with the ``weighted_alpaca_eval_gpt4_turbo`` settings
  (``numerator_token="m"``, ``denominator_tokens=["m", "M"]``, ``is_binarize=False``) and the
  ``PairwiseAnnotator`` output-order randomisation (``preference -> 3 - preference`` when switched)
  -> :func:`preference_from_top_logprobs`;
* ``metrics.helpers.AbsoluteScoringRule/ZeroOneScoringRule.describe_head2head`` (via
  ``metrics.winrate.get_winrate``) -> :func:`win_rate_metrics`;
* ``metrics.glm_winrate`` (GLM ``length_controlled_v1``: formula
  ``np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1``,
  ``regularize_to_baseline_lambda=0.2``, ``LogisticRegressionCV`` with L1/liblinear, 5 group
  folds, ``random_state=123``, continuous targets by row duplication and the continuous log-loss
  scorer) -> :func:`length_controlled_win_rate`, and ``predict_winrate`` ->
  :func:`predict_lc_win_rate_from_weights`.

Only the feature matrix is built by hand instead of with patsy (same three columns, same names,
same order). The LC results were cross-checked against upstream's own ``glm_winrate.py`` (0.6.6, run
in a scratch directory with ``hf_hub_download`` redirected to local files): identical to the last
printed digit (1e-10), with and without the gamed-baseline regulariser (reference values in
``tests/test_metrics_alpaca_eval.py``); raw/discrete win rates and the logprob rule match upstream's
functions exactly as well.

Instruction difficulty
----------------------
The LC GLM needs the per-instruction ``instruction_difficulty`` (805 values, index = row of the
AlpacaEval set). Sources, in order of fidelity:

1. the official hub file ``instruction_difficulty.csv`` (dataset ``tatsu-lab/alpaca_eval``),
   :func:`download_instruction_difficulty` (network; never called by tests);
2. the official ``df_gamed.csv`` (same dataset), from which upstream actually takes the difficulty
   *and* the gamed-baseline rows used for regularisation: :func:`download_gamed_annotations` +
   :func:`instruction_difficulty_from_gamed` (network; never called by tests);
3. the offline surrogate ``<shared data>/alpaca_eval/instruction_difficulty_surrogate.csv``
   (NOT upstream, derived from the published GLM weights; LC within ~0.2 points of the leaderboard
   on average, max ~0.9) via :func:`load_instruction_difficulty`.

Gamed-baseline regularisation: upstream adds the annotations of two "gamed" GPT-4 baselines
(verbose / concise, from ``df_gamed.csv``) to the training set with sample weight
``lambda / 2 = 0.1`` each and ``not_gamed_baseline = 0``. When those rows are not supplied
(offline), :func:`length_controlled_win_rate` falls back to upstream's unregularised path
(``regularize_to_baseline_lambda=None``) and reports ``"regularized": False``. That fallback is NOT
the leaderboard number: with the surrogate difficulty it gives 21.40 (gpt-3.5-turbo-1106, published
19.30) and 7.12 (alpaca-7b, published 5.88). For leaderboard-comparable LC pass
``gamed_annotations=download_gamed_annotations()`` (and the official difficulty).

Offline stand-in for ``df_gamed.csv`` (tried, NOT adopted): synthetic gamed rows built only from
the gamed models' public numbers -- per instruction ``i`` the baseline length ``L_i`` (from
``gpt4_1106_preview_outputs.json``), gamed length ``L_i * avg_length_gamed / avg_length_baseline``
(leaderboard: verbose 2402, concise 1136, baseline 2049), hence ``delta_i = L_i - gamed_i`` and
``std_delta_len = delta / std(delta)`` as upstream (the ratio cancels: ``+-L_i / std(L)``), surrogate
difficulty, ``not_gamed_baseline = False`` and the soft target
``p_i = logistic(w . [tanh(std_delta_len_i), difficulty_i, 1])`` with that gamed model's published
GLM weights (the model's own fitted preference). Regularised refit (lambda 0.2), surrogate
difficulty, vs leaderboard LC:

* proportional lengths: gpt-3.5-turbo-1106 21.06 (+1.76), alpaca-7b 6.26 (+0.39);
* proportional lengths with ``std_delta_len`` scaled per gamed model so that ``mean(p_i)`` equals
  its published raw win rate (scale 0.27 verbose / 0.62 concise): 21.96 (+2.66), 6.71 (+0.84).

Neither is within 1.0 point for both models (the unregularised fallback is +2.10 / +1.24).

Default since then ('auto', :func:`resolve_lc_inputs`): the hub files when reachable, else the
offline reconstructions of both hub files in ``<shared data>/alpaca_eval`` (or a configured folder):
``df_gamed_offline_reconstruction.csv`` and ``instruction_difficulty_offline_reconstruction.csv``,
rebuilt from the gamed models' outputs and a joint fit over 52 models' annotations. With them the
regularised refit gives 20.10 (gpt-3.5-turbo-1106, leaderboard 19.30) and 5.65 (alpaca-7b, 5.875);
the source of each file is recorded (``difficulty_source``, ``gamed_source``, ``lc_hub_error``). The
unregularised GLM is used only when a caller asks for it (``gamed_annotations='none'``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "GLM_FEATURES",
    "HUB_REPO_ID",
    "JUDGE_DENOMINATOR_TOKENS",
    "JUDGE_NUMERATOR_TOKEN",
    "download_gamed_annotations",
    "download_instruction_difficulty",
    "evaluate_annotations",
    "instruction_difficulty_from_gamed",
    "length_controlled_win_rate",
    "load_annotations",
    "load_glm_weights",
    "load_instruction_difficulty",
    "official_model_first",
    "predict_lc_win_rate_from_weights",
    "preference_from_top_logprobs",
    "top_logprobs_from_completion",
    "win_rate_metrics",
]

# weighted_alpaca_eval_gpt4_turbo/configs.yaml: completion_parser_kwargs
JUDGE_NUMERATOR_TOKEN = "m"  # "m" identifies the output shown first in the prompt
JUDGE_DENOMINATOR_TOKENS = ("m", "M")  # "M" identifies the output shown second

HUB_REPO_ID = "tatsu-lab/alpaca_eval"

# Column names produced by patsy for the length_controlled_v1 formula (also the column names of the
# published weights CSV), in patsy's order.
FEAT_LEN = "np.tanh(std_delta_len)"
FEAT_DIFFICULTY = "instruction_difficulty"
FEAT_NOT_GAMED = "not_gamed_baseline.astype(float)"
GLM_FEATURES = (FEAT_LEN, FEAT_DIFFICULTY, FEAT_NOT_GAMED)

LENGTH_CONTROLLED_V1 = {
    "regularize_to_baseline_lambda": 0.2,
    "n_splits": 5,
    "random_state": 123,
}


# --------------------------------------------------------------------------------------------------
# Judge: logprobs -> preference
# --------------------------------------------------------------------------------------------------
def _token_logprob_map(top_logprobs: Any) -> dict[str, float]:
    """Normalise top logprobs into ``{token: logprob}`` (later duplicates win, as upstream)."""
    if isinstance(top_logprobs, Mapping):
        if "top_logprobs" in top_logprobs:  # a single OpenAI `content[i]` entry
            return _token_logprob_map(top_logprobs["top_logprobs"])
        if "token" in top_logprobs and "logprob" in top_logprobs:  # a single {token, logprob}
            return {str(top_logprobs["token"]): float(top_logprobs["logprob"])}
        return {str(k): float(v) for k, v in top_logprobs.items()}
    out: dict[str, float] = {}
    for item in top_logprobs:
        if isinstance(item, Mapping):
            token, logprob = item["token"], item["logprob"]
        elif hasattr(item, "token") and hasattr(item, "logprob"):  # openai SDK TopLogprob objects
            token, logprob = item.token, item.logprob
        else:  # (token, logprob) pairs
            token, logprob = item
        out[str(token)] = float(logprob)
    return out


def preference_from_top_logprobs(
    top_logprobs: Mapping[str, float] | Sequence[Any],
    *,
    model_first: bool,
    numerator_token: str = JUDGE_NUMERATOR_TOKEN,
    denominator_tokens: Sequence[str] = JUDGE_DENOMINATOR_TOKENS,
) -> float | None:
    """AlpacaEval preference from the judge's first-token top logprobs (``weighted_alpaca_eval_gpt4_turbo``).

    The judge prompt shows two outputs labelled ``"m"`` (shown first) and ``"M"`` (shown second)
    and the judge answers with a single token. Upstream ``logprob_parser`` (``is_binarize=False``)
    returns ``2 - p`` with ``p = P(m) / (P(m) + P(M))`` computed from the *top* logprobs of the first
    generated token only (a token absent from the top list gets probability 0), i.e. a preference in
    ``[1, 2]`` where 1 means the output shown first is better.

    The return value uses the AlpacaEval annotation convention, **independent of display order**:
    ``output_1`` = baseline, ``output_2`` = the evaluated model; ``1.0`` = baseline better,
    ``2.0`` = model better, ``1.5`` = indifferent.

    Parameters
    ----------
    top_logprobs
        Either a mapping ``{token: logprob}``, or a list of ``{"token": ..., "logprob": ...}`` dicts
        (the OpenAI ``choices[0].logprobs.content[0].top_logprobs`` format; openai SDK objects with
        ``.token``/``.logprob`` and ``(token, logprob)`` pairs are accepted too), or one OpenAI
        ``content[i]`` dict holding ``top_logprobs``. Natural-log probabilities.
    model_first
        ``True`` if the evaluated model's output was shown first (as ``"m"``) and the baseline second;
        ``False`` for the canonical order (baseline first). Upstream randomises the order per
        instruction and maps a switched annotation back with ``3 - preference``; this flag does that.

    Returns
    -------
    float or None
        ``None`` when neither token appears in the top logprobs (upstream returns NaN, which is then
        dropped from the win rate).
    """
    tokens = list(denominator_tokens) + [numerator_token]
    lp = {t: v for t, v in _token_logprob_map(top_logprobs).items() if t in tokens}
    if not lp:
        return None
    missing = float("-inf")
    numerator = lp.get(numerator_token, missing)
    denominator = np.logaddexp.reduce([lp.get(t, missing) for t in denominator_tokens])
    if not np.isfinite(denominator):  # only -inf logprobs: no usable mass
        return None
    p_first = float(np.exp(numerator - denominator))
    preference_display_order = 2.0 - p_first  # 1 = output shown first is better
    return 3.0 - preference_display_order if model_first else preference_display_order


def official_model_first(instruction: str, seed: int = 0) -> bool:
    """Upstream's display order for one instruction: ``True`` if the model's output is shown first.

    ``PairwiseAnnotator`` (``is_randomize_output_order=True``) switches ``output_1``/``output_2``
    when ``random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True])``
    is True, with the annotator's default ``seed=0``. Reproduces the order of the published
    annotations exactly (checked on all non-trivial rows of the shipped annotation files), so our
    judge stage can use the very same order: pass the result as ``model_first`` to
    :func:`preference_from_top_logprobs`.
    """
    import random

    return bool(
        random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[
            0
        ]
    )


def top_logprobs_from_completion(completion: Any, position: int = 0) -> list[dict[str, Any]]:
    """Extract ``top_logprobs`` of token ``position`` from an OpenAI chat completion (dict or SDK object).

    Accepts the full response (``choices[0]``), one choice (as stored in AlpacaEval's
    ``raw_completion``), or the string repr of either (AlpacaEval stores ``raw_completion`` as a
    Python-literal string in some files).
    """
    if isinstance(completion, str):
        import ast

        completion = ast.literal_eval(completion)
    if hasattr(completion, "model_dump"):
        completion = completion.model_dump()
    if isinstance(completion, Mapping) and "choices" in completion:
        completion = completion["choices"][0]
    return list(completion["logprobs"]["content"][position]["top_logprobs"])


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load_annotations(path: str | Path) -> pd.DataFrame:
    """Load an official AlpacaEval ``annotations.json`` (list of records) or a ``.jsonl`` of records.

    Columns are kept as in the file (``instruction``, ``output_1``, ``generator_1``, ``output_2``,
    ``generator_2``, ``annotator``, ``preference``, ``raw_completion``, ...). ``preference`` is
    coerced to float (``None`` -> NaN). The row order (and default RangeIndex) is preserved: the LC
    GLM looks up the instruction difficulty by row position, as upstream does.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
        if isinstance(records, Mapping):
            records = [records]
    df = pd.DataFrame.from_records(records)
    if "preference" in df.columns:
        df["preference"] = pd.to_numeric(df["preference"], errors="coerce").astype(float)
    return df


def load_instruction_difficulty(path: str | Path) -> pd.Series:
    """Read an ``instruction_difficulty.csv`` (official hub file or the offline surrogate).

    Same as upstream ``pd.read_csv(path, index_col=0).squeeze()``; the index is the row of the
    805-instruction AlpacaEval set.
    """
    s = pd.read_csv(path, index_col=0)
    if isinstance(s, pd.DataFrame):
        if "instruction_difficulty" in s.columns:
            s = s["instruction_difficulty"]
        else:
            s = s.squeeze("columns")
    s = s.astype(float)
    s.name = "instruction_difficulty"
    return s


def download_instruction_difficulty(cache_dir: str | Path | None = None) -> pd.Series:
    """Download the official ``instruction_difficulty.csv`` from the HF hub (needs network)."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id=HUB_REPO_ID,
        filename="instruction_difficulty.csv",
        repo_type="dataset",
        cache_dir=cache_dir,
    )
    return load_instruction_difficulty(path)


def download_gamed_annotations(cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Download upstream ``df_gamed.csv`` (gamed-baseline rows for the GLM regulariser; needs network)."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id=HUB_REPO_ID, filename="df_gamed.csv", repo_type="dataset", cache_dir=cache_dir
    )
    return pd.read_csv(path).drop(columns=["model"], errors="ignore")


def instruction_difficulty_from_gamed(df_gamed: pd.DataFrame) -> pd.Series:
    """Upstream's own difficulty source: ``df_gamed.drop_duplicates("index")["instruction_difficulty"]``."""
    return df_gamed.drop_duplicates("index")["instruction_difficulty"].astype(float)


def load_glm_weights(path: str | Path) -> pd.DataFrame:
    """Read a published GLM weights CSV (one row per model, columns :data:`GLM_FEATURES`)."""
    return pd.read_csv(path, index_col=0)


# --------------------------------------------------------------------------------------------------
# Raw / discrete win rates
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# Length-controlled win rate (GLM length_controlled_v1)
# --------------------------------------------------------------------------------------------------
def _logistic(x: Any) -> Any:
    """Upstream ``_logistic``: numerically stable sigmoid."""
    return np.exp(-np.logaddexp(0, -x))


def _sklearn_at_least(major: int, minor: int) -> bool:
    import sklearn

    parts = sklearn.__version__.split(".")
    return (int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)) >= (
        major,
        minor,
    )


def _logloss(y_true, y_pred, sample_weight=None):
    """Upstream ``logloss`` (weighted mean of the Bernoulli log-loss, clipped at 1e-15)."""
    epsilon = 1e-15
    y_pred = np.clip(y_pred, epsilon, 1 - epsilon)
    all_logloss = y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred)
    if sample_weight is not None:
        all_logloss = all_logloss * sample_weight
    return -np.mean(all_logloss)


def _logloss_continuous(y_true, y_pred, true_prob, true_sample_weight=None):
    """Upstream ``logloss_continuous``: undo the row-duplication trick inside the CV scorer."""
    y_true = np.where(y_true == 1, true_prob, 1 - true_prob)
    return _logloss(y_true, y_pred, sample_weight=true_sample_weight)


def _fit_logistic_regression_cv(
    X: pd.DataFrame,
    y_proba: np.ndarray,
    *,
    sample_weight: np.ndarray | None = None,
    n_splits: int = 5,
    random_state: int = 123,
):
    """Upstream ``fit_LogisticRegressionCV(..., is_ytrue_proba=True)``.

    Each row is duplicated: once with label 1 and weight ``p``, once with label 0 and weight
    ``1 - p`` (times the optional sample weight), so that the weighted binary log-loss equals the
    cross-entropy with the soft target ``p``. ``LogisticRegressionCV`` (L1, liblinear, no intercept,
    Cs=10, ``random_state=123``) picks C by ``GroupKFold`` on the original rows using the continuous
    log-loss scorer, then refits on all rows.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(X)
    X_np = X.to_numpy(dtype=float)
    X_dup = pd.DataFrame(np.vstack([X_np, X_np]), columns=list(X.columns))
    y_dup = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    true_prob = np.concatenate([y_proba, 1 - y_proba])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    if sample_weight is None:
        true_sample_weight = None
        fit_weight = true_prob
    else:
        true_sample_weight = np.concatenate([sample_weight, sample_weight])
        fit_weight = true_prob * true_sample_weight

    model_kwargs: dict[str, Any] = dict(
        random_state=random_state, dual=False, solver="liblinear", n_jobs=None, fit_intercept=False
    )
    if _sklearn_at_least(1, 8):  # `penalty` deprecated in 1.8 (removed in 1.10): l1_ratio=1 <=> L1
        model_kwargs["l1_ratios"] = (1.0,)
        model_kwargs["use_legacy_attributes"] = False
    else:
        model_kwargs["penalty"] = "l1"

    with sklearn.config_context(enable_metadata_routing=True):
        score_request = {"true_prob": True}
        fit_kwargs: dict[str, Any] = {"groups": groups, "true_prob": true_prob}
        if true_sample_weight is not None:
            score_request["true_sample_weight"] = True
            fit_kwargs["true_sample_weight"] = true_sample_weight
        scorer = make_scorer(
            _logloss_continuous, response_method="predict_proba", greater_is_better=False
        ).set_score_request(**score_request)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=n_splits), scoring=scorer, **model_kwargs
        )
        model.set_fit_request(sample_weight=True)
        model.fit(X_dup, y_dup, sample_weight=fit_weight, **fit_kwargs)
    return model


def _glm_design(df: pd.DataFrame) -> pd.DataFrame:
    """The patsy design matrix of length_controlled_v1 (no intercept), built by hand."""
    return pd.DataFrame(
        {
            FEAT_LEN: np.tanh(df["std_delta_len"].astype(float).to_numpy()),
            FEAT_DIFFICULTY: df["instruction_difficulty"].astype(float).to_numpy(),
            FEAT_NOT_GAMED: df["not_gamed_baseline"].astype(float).to_numpy(),
        }
    )


def length_controlled_win_rate(
    annotations_df: pd.DataFrame,
    instruction_difficulty: pd.Series | Mapping[int, float] | Sequence[float],
    *,
    gamed_annotations: pd.DataFrame | None = None,
    regularize_to_baseline_lambda: float | None = LENGTH_CONTROLLED_V1[
        "regularize_to_baseline_lambda"
    ],
    n_splits: int = LENGTH_CONTROLLED_V1["n_splits"],
    random_state: int = LENGTH_CONTROLLED_V1["random_state"],
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Length-controlled win rate, upstream ``get_length_controlled_winrate`` (GLM ``length_controlled_v1``).

    Steps (as upstream ``_get_featurized_data`` + ``fit_LogisticRegressionCV``):

    1. ``std_delta_len = (len(output_1) - len(output_2)) / std(len(output_1) - len(output_2))``
       (character lengths, baseline minus model, pandas ``std`` with ddof=1, no centring);
    2. target ``preference - 1`` in [0, 1] (legacy 0 -> draw 1.5; NaN rows dropped from training);
    3. ``instruction_difficulty`` looked up by the annotation's index label (row of the 805 set);
    4. ``not_gamed_baseline = 1`` for the model's rows; if ``gamed_annotations`` (upstream
       ``df_gamed.csv`` rows, ``not_gamed_baseline`` False, preference already in [0, 1]) are given and
       ``regularize_to_baseline_lambda`` is truthy, they are appended with sample weight ``lambda / 2``;
    5. L1 logistic regression with CV on the soft targets (see :func:`_fit_logistic_regression_cv`);
    6. predict for every instruction with the length term zeroed (``std_delta_len = 0``) and average.

    Returns ``lc_win_rate`` (= 100 * mean prediction), ``lc_standard_error`` (= 100 * sem of the
    per-instruction predictions, as upstream), ``weights`` (GLM coefficients by feature name),
    ``regularized`` (whether gamed rows were used), ``n_train`` and, if requested,
    ``glm_preferences`` (per-instruction predictions in [0, 1]).
    """
    df_in = annotations_df
    if "generator_1" in df_in.columns and "generator_2" in df_in.columns:
        models = df_in["generator_2"].dropna().unique()
        baselines = df_in["generator_1"].dropna().unique()
        if len(models) > 1:
            raise ValueError(
                f"annotations must be for a single model (generator_2), got {list(models)}"
            )
        if len(models) == 1 and len(baselines) == 1 and models[0] == baselines[0]:
            preds = np.full(len(df_in), 0.5)
            out = {
                "lc_win_rate": 50.0,
                "lc_standard_error": float(pd.Series(preds).sem() * 100),
                "weights": {f: 0.0 for f in GLM_FEATURES},
                "regularized": False,
                "n_train": 0,
            }
            if return_predictions:
                out["glm_preferences"] = preds
            return out

    difficulty = instruction_difficulty
    if not isinstance(difficulty, pd.Series):
        difficulty = pd.Series(difficulty if isinstance(difficulty, Mapping) else list(difficulty))
    idx = list(df_in.index)
    missing = [i for i in idx if i not in difficulty.index]
    if missing:
        raise ValueError(
            f"no instruction_difficulty for annotation index labels {missing[:5]}... "
            "(annotations must be indexed by their row in the 805-instruction AlpacaEval set)"
        )

    len_1 = df_in["output_1"].astype(str).str.len().astype(float).to_numpy()
    len_2 = df_in["output_2"].astype(str).str.len().astype(float).to_numpy()
    delta = pd.Series(len_1 - len_2)
    df = pd.DataFrame(
        {
            "preference": pd.to_numeric(df_in["preference"], errors="coerce")
            .astype(float)
            .replace({0.0: 1.5})
            .to_numpy()
            - 1,
            "index": idx,
            "std_delta_len": (delta / delta.std()).to_numpy(),
            "instruction_difficulty": difficulty.loc[idx].astype(float).to_numpy(),
            "not_gamed_baseline": True,
        }
    )

    regularized = bool(regularize_to_baseline_lambda) and gamed_annotations is not None
    if regularized:
        gamed = gamed_annotations.drop(columns=["model"], errors="ignore")
        train = pd.concat([gamed, df], axis=0, ignore_index=True)
        not_gamed = train["not_gamed_baseline"].astype(bool).to_numpy()
        # divided by 2 because there are two gamed baselines (upstream comment)
        sample_weight = (
            not_gamed.astype(float)
            + (regularize_to_baseline_lambda * (~not_gamed)).astype(float) / 2
        )
    else:
        train = df
        sample_weight = None

    X_train = _glm_design(train)
    y_train = train["preference"].astype(float).to_numpy()
    keep = ~np.isnan(y_train) & ~X_train.isna().any(axis=1).to_numpy()
    X_train, y_train = X_train[keep].reset_index(drop=True), y_train[keep]
    if sample_weight is not None:
        sample_weight = sample_weight[keep]

    model = _fit_logistic_regression_cv(
        X_train, y_train, sample_weight=sample_weight, n_splits=n_splits, random_state=random_state
    )
    df_test = df[["instruction_difficulty", "not_gamed_baseline"]].copy()
    df_test["std_delta_len"] = 0.0
    preds = model.predict_proba(_glm_design(df_test))[:, 1]
    weights = dict(
        zip(GLM_FEATURES, (float(w) for w in np.ravel(model.coef_)[: len(GLM_FEATURES)]))
    )

    out = {
        "lc_win_rate": float(np.mean(preds) * 100),
        "lc_standard_error": float(pd.Series(preds).sem() * 100),
        "weights": weights,
        "regularized": regularized,
        "n_train": int(len(X_train)),
    }
    if return_predictions:
        out["glm_preferences"] = preds
    return out


def predict_lc_win_rate_from_weights(
    weights: pd.DataFrame | Mapping[str, float] | pd.Series,
    instruction_difficulty: pd.Series | Sequence[float],
    *,
    model: str | None = None,
    baseline: str | None = None,
) -> dict[str, float]:
    """Upstream ``predict_winrate``: LC win rate of ``model`` vs ``baseline`` from fitted GLM weights.

    ``p_i = logistic(dw[not_gamed] + dw[instruction_difficulty] * difficulty_i)`` with
    ``dw = w_model - w_baseline`` (the length term is zeroed); returns ``lc_win_rate`` (100 * mean)
    and ``lc_standard_error`` (100 * sem). ``weights`` is either a weights table (then ``model`` and
    optionally ``baseline`` name its rows; baseline weights default to 0, which is the
    ``gpt4_1106_preview`` row by construction) or a single mapping of feature -> weight.
    """
    if isinstance(weights, pd.DataFrame):
        if model is None:
            raise ValueError("`model` is required when `weights` is a table")
        w = weights.loc[model].astype(float)
        if baseline is not None:
            w = w - weights.loc[baseline].astype(float)
    else:
        w = pd.Series(dict(weights), dtype=float)
    diff = np.asarray(
        list(instruction_difficulty.values)
        if isinstance(instruction_difficulty, pd.Series)
        else list(instruction_difficulty),
        dtype=float,
    )
    p = _logistic(w[FEAT_NOT_GAMED] + w[FEAT_DIFFICULTY] * diff)
    return {
        "lc_win_rate": float(np.mean(p) * 100),
        "lc_standard_error": float(pd.Series(p).sem() * 100),
    }


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


# --------------------------------------------------------------------------------------------------
# LC inputs and the whole report: one code path for `sgpo metrics alpaca-eval` and the judge stages
# --------------------------------------------------------------------------------------------------
LC_MIN_ROWS = 5  # the GLM picks its regularisation by 5-fold grouped CV
UNREGULARISED_NOTE = (
    "LC from the unregularised GLM (no gamed-baseline rows): not the leaderboard's LC, "
    "typically 1-2 points off; give the gamed annotations (hub or a CSV) for the official one"
)


class LCInputError(ValueError):
    """An LC input (instruction difficulty, gamed-baseline rows) that cannot be read; names the source."""


def resolve_instruction_difficulty(
    source: str | Path | None, *, fallback: Path | None = None
) -> tuple[pd.Series | None, str | None]:
    """(difficulty, where it came from): 'hub' downloads the official file, 'none' skips LC, a path is
    read; None uses `fallback` when that file exists (else no LC)."""
    if source is None:
        if fallback is not None and Path(fallback).is_file():
            return load_instruction_difficulty(fallback), f"surrogate:{fallback}"
        return None, None
    text = str(source)
    if text.lower() == "none":
        return None, None
    if text.lower() == "hub":
        try:
            return (
                download_instruction_difficulty(),
                f"hub:{HUB_REPO_ID}/instruction_difficulty.csv",
            )
        except Exception as e:
            raise LCInputError(
                f"instruction difficulty 'hub': could not download {HUB_REPO_ID}/instruction_difficulty.csv "
                f"({type(e).__name__}: {e}); give a local CSV path, or 'none' to skip the LC win rate"
            ) from e
    try:
        return load_instruction_difficulty(text), f"file:{text}"
    except (OSError, ValueError, KeyError) as e:
        raise LCInputError(f"instruction difficulty: cannot read {text!r}: {e}") from e


def resolve_gamed_annotations(source: str | Path | None) -> tuple[pd.DataFrame | None, str | None]:
    """(upstream df_gamed rows, where they came from); None / 'none': no regulariser."""
    if source is None or str(source).lower() == "none":
        return None, None
    text = str(source)
    if text.lower() == "hub":
        try:
            return download_gamed_annotations(), f"hub:{HUB_REPO_ID}/df_gamed.csv"
        except Exception as e:
            raise LCInputError(
                f"gamed annotations 'hub': could not download {HUB_REPO_ID}/df_gamed.csv "
                f"({type(e).__name__}: {e}); give a local CSV path, or 'none' for the unregularised GLM"
            ) from e
    try:
        return pd.read_csv(text).drop(columns=["model"], errors="ignore"), f"file:{text}"
    except (OSError, ValueError) as e:
        raise LCInputError(f"gamed annotations: cannot read {text!r}: {e}") from e


# Offline reconstructions of the two hub files (NOT upstream; shared data README: mean |LC error| 0.48,
# max 1.9 points on 22 leaderboard models). Used by 'auto' when the hub is unreachable.
OFFLINE_DIFFICULTY_FILE = "instruction_difficulty_offline_reconstruction.csv"
OFFLINE_GAMED_FILE = "df_gamed_offline_reconstruction.csv"
AUTO = "auto"


def default_lc_offline_dir() -> Path:
    """`<shared data>/alpaca_eval` ($SGPO_SHARED_DATA or ../shared/data): where the offline reconstructions live."""
    from sgpo.data.shared import shared_data_dir

    return shared_data_dir() / "alpaca_eval"


def _offline_source(path: Path) -> str:
    import hashlib

    return (
        f"offline-reconstruction:{path}@sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    )


def _resolve_auto(
    difficulty: str | Path | None, gamed: str | Path | None, offline_dir: str | Path | None
) -> tuple[str | Path | None, str | Path | None, dict[str, Any]]:
    """Replace 'auto' by the hub (tried once, for both files) or, when it is unreachable, by the offline files."""
    wants = [x is not None and str(x).lower() == AUTO for x in (difficulty, gamed)]
    info: dict[str, Any] = {"hub_error": None, "offline_dir": None}
    if not any(wants):
        return difficulty, gamed, info
    loaded: dict[str, Any] = {}
    try:
        if wants[0]:
            loaded["difficulty"] = (
                download_instruction_difficulty(),
                f"hub:{HUB_REPO_ID}/instruction_difficulty.csv",
            )
        if wants[1]:
            loaded["gamed"] = (download_gamed_annotations(), f"hub:{HUB_REPO_ID}/df_gamed.csv")
        info["loaded"] = loaded
        return difficulty, gamed, info
    except (
        Exception
    ) as e:  # unreachable hub (offline, firewalled, rate limited): the offline reconstructions
        info["hub_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    folder = Path(offline_dir).expanduser() if offline_dir else default_lc_offline_dir()
    info["offline_dir"] = str(folder)
    files = {"difficulty": folder / OFFLINE_DIFFICULTY_FILE, "gamed": folder / OFFLINE_GAMED_FILE}
    for key, want in zip(("difficulty", "gamed"), wants):
        if want and not files[key].is_file():
            raise LCInputError(
                f"LC input {key!r} is 'auto' but the hub is unreachable ({info['hub_error']}) and {files[key]} does not "
                f"exist: set lc_offline_dir (--lc-offline-dir) to the folder holding {OFFLINE_DIFFICULTY_FILE} and "
                f"{OFFLINE_GAMED_FILE}, give CSV paths, or 'none' to skip the LC win rate"
            )
    return (
        (files["difficulty"] if wants[0] else difficulty),
        (files["gamed"] if wants[1] else gamed),
        info,
    )


def resolve_lc_inputs(
    difficulty: str | Path | None = AUTO,
    gamed: str | Path | None = AUTO,
    *,
    fallback_difficulty: Path | None = None,
    offline_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Both LC inputs and their sources; with gamed rows but no difficulty, the difficulty is their column.

    'auto' (the default of the judge stage and of `sgpo metrics alpaca-eval`): the hub files when the
    hub is reachable, else the offline reconstructions in `offline_dir` (default
    `default_lc_offline_dir()`), so LC is regularised as upstream unless a caller asks for 'none'.
    `hub_error` says why the hub was not used."""
    difficulty, gamed, info = _resolve_auto(difficulty, gamed, offline_dir)
    loaded = info.pop("loaded", {})
    if "difficulty" in loaded:
        diff, diff_source = loaded["difficulty"]
    elif (
        difficulty is not None
        and Path(str(difficulty)).name == OFFLINE_DIFFICULTY_FILE
        and Path(str(difficulty)).is_file()
    ):
        diff, diff_source = (
            load_instruction_difficulty(difficulty),
            _offline_source(Path(difficulty)),
        )
    else:
        diff, diff_source = resolve_instruction_difficulty(difficulty, fallback=fallback_difficulty)
    if "gamed" in loaded:
        gamed_df, gamed_source = loaded["gamed"]
    else:
        gamed_df, gamed_source = resolve_gamed_annotations(gamed)
        if gamed_df is not None and Path(str(gamed)).name == OFFLINE_GAMED_FILE:
            gamed_source = _offline_source(Path(gamed))
    if (
        diff is None
        and gamed_df is not None
        and (difficulty is None or str(difficulty).lower() != "none")
    ):
        diff, diff_source = (
            instruction_difficulty_from_gamed(gamed_df),
            f"{gamed_source} (instruction_difficulty column)",
        )
    return {
        "difficulty": diff,
        "difficulty_source": diff_source,
        "gamed": gamed_df,
        "gamed_source": gamed_source,
        "hub_error": info["hub_error"],
    }


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
