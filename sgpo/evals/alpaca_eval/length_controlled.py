"""The length-controlled win rate: upstream's GLM ``length_controlled_v1`` (fit and predict)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

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
