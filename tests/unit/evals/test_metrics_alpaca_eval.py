"""AlpacaEval 2.0 metrics against the official leaderboard and upstream's own code.

Reference data: ``$SGPO_SHARED_DATA`` or ``<repo>/../shared/data`` (``alpaca_eval/``). Tests that need
it are skipped with a reason when it is absent.

Reference values marked "upstream code" were produced by running tatsu-lab/alpaca_eval 0.6.6's own
``metrics.get_winrate`` / ``metrics.glm_winrate.get_length_controlled_winrate`` on the very same
inputs (in a scratch directory, with ``hf_hub_download`` redirected to local CSVs built from the
surrogate difficulty file), i.e. they pin our re-implementation to upstream behaviour.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sgpo.cli.metrics import main as cli_main
from sgpo.data.shared import shared_data_dir
from sgpo.evals import alpaca_eval as ae

DATA = shared_data_dir() / "alpaca_eval"
LEADERBOARD = DATA / "leaderboard_weighted_alpaca_eval_gpt4_turbo.csv"
WEIGHTS = DATA / "lc_glm_weights_baseline_gpt4_1106_preview.csv"
SURROGATE = DATA / "instruction_difficulty_surrogate.csv"
BASELINE = "gpt4_1106_preview"
MODELS = ("gpt-3.5-turbo-1106", "alpaca-7b")
# Published figures quoted in the data README (also read from the leaderboard CSV below).
PUBLISHED_WR = {"gpt-3.5-turbo-1106": 9.1780, "alpaca-7b": 2.5915}
PUBLISHED_LC = {"gpt-3.5-turbo-1106": 19.301, "alpaca-7b": 5.875}


def _require_data() -> None:
    if not DATA.is_dir():
        pytest.skip(
            f"offline AlpacaEval reference data not found at {DATA} (set SGPO_SHARED_DATA or provide ../shared/data)"
        )


@pytest.fixture(scope="module")
def leaderboard() -> pd.DataFrame:
    _require_data()
    return pd.read_csv(LEADERBOARD, index_col=0)


@pytest.fixture(scope="module")
def difficulty() -> pd.Series:
    _require_data()
    return ae.load_instruction_difficulty(SURROGATE)


@pytest.fixture(scope="module")
def annotations() -> dict[str, pd.DataFrame]:
    _require_data()
    return {m: ae.load_annotations(DATA / f"annotations_{m}.json") for m in MODELS}


# --------------------------------------------------------------------------------------------------
# preference_from_top_logprobs (no data needed)
# --------------------------------------------------------------------------------------------------
def test_preference_mapping_both_orders():
    lp = {"m": math.log(0.8), "M": math.log(0.2)}
    # baseline shown first ("m"): P(first better)=0.8 -> preference 2 - 0.8
    assert ae.preference_from_top_logprobs(lp, model_first=False) == pytest.approx(1.2)
    # model shown first: the same judge answer now favours the model
    assert ae.preference_from_top_logprobs(lp, model_first=True) == pytest.approx(1.8)


def test_preference_normalises_over_m_and_M_only():
    # other tokens' mass is ignored: 0.3 / (0.3 + 0.1) = 0.75
    lp = [
        {"token": "The", "logprob": math.log(0.5)},
        {"token": "m", "logprob": math.log(0.3)},
        {"token": "M", "logprob": math.log(0.1)},
        {"token": " m", "logprob": math.log(0.05)},  # not the exact token: ignored, as upstream
    ]
    assert ae.preference_from_top_logprobs(lp, model_first=False) == pytest.approx(1.25)
    assert ae.preference_from_top_logprobs(lp, model_first=True) == pytest.approx(1.75)
    sdk_objects = [SimpleNamespace(token=d["token"], logprob=d["logprob"]) for d in lp]
    assert ae.preference_from_top_logprobs(sdk_objects, model_first=False) == pytest.approx(1.25)
    content_entry = {"token": "The", "logprob": math.log(0.5), "top_logprobs": lp}
    assert ae.preference_from_top_logprobs(content_entry, model_first=False) == pytest.approx(1.25)


def test_preference_missing_tokens():
    # a token absent from the top list has probability 0
    assert ae.preference_from_top_logprobs(
        {"M": -0.01, "The": -5.0}, model_first=False
    ) == pytest.approx(2.0)
    assert ae.preference_from_top_logprobs(
        {"M": -0.01, "The": -5.0}, model_first=True
    ) == pytest.approx(1.0)
    assert ae.preference_from_top_logprobs({"m": -3.0}, model_first=False) == pytest.approx(1.0)
    assert ae.preference_from_top_logprobs({"The": -0.1, "Both": -2.0}, model_first=False) is None
    assert ae.preference_from_top_logprobs([], model_first=True) is None


def test_official_model_first_is_deterministic_and_mixed():
    flags = [ae.official_model_first(f"instruction {i}") for i in range(200)]
    assert flags == [ae.official_model_first(f"instruction {i}") for i in range(200)]
    assert 60 < sum(flags) < 140  # a fair coin per instruction


def test_stored_preferences_reproduced_from_raw_logprobs(annotations):
    """Every judge-made preference in the official files = our rule on its raw logprobs + upstream order."""
    for model, df in annotations.items():
        n_checked, orders = 0, set()
        for instruction, raw, pref in zip(
            df["instruction"], df["raw_completion"], df["preference"]
        ):
            if raw is None:  # identical outputs: upstream sets 1.5 without calling the judge
                assert pref == 1.5
                continue
            model_first = ae.official_model_first(instruction)
            orders.add(model_first)
            ours = ae.preference_from_top_logprobs(
                ae.top_logprobs_from_completion(raw), model_first=model_first
            )
            assert ours == pytest.approx(pref, abs=1e-6), (model, instruction[:60])
            n_checked += 1
        assert n_checked >= 800 and orders == {True, False}


# --------------------------------------------------------------------------------------------------
# Raw / discrete win rate
# --------------------------------------------------------------------------------------------------
def test_win_rate_edge_cases_match_upstream_code():
    # upstream code on these inputs: legacy 0 -> draw, NaN and 2.5 dropped from the raw win rate,
    # but ZeroOneScoringRule rounds 2.5 -> 2 before filtering, hence discrete over 7 values.
    out = ae.win_rate_metrics([1.0, 2.0, 1.5, 0, float("nan"), 1.2, 1.8, 2.5])
    assert out["win_rate"] == pytest.approx(50.0)
    assert out["standard_error"] == pytest.approx(15.055453054181623)
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (2, 2, 2, 6)
    assert out["discrete_win_rate"] == pytest.approx(400 / 7)
    out = ae.win_rate_metrics(
        [1.5, 1.5000001, 1.4999999, None], lengths_model=["ab", "abcd", "a", "abc"]
    )
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (1, 1, 1, 3)
    assert out["discrete_win_rate"] == pytest.approx(50.0)
    assert out["avg_length"] == 2  # int(mean([2, 4, 1, 3]))


@pytest.mark.parametrize("model", MODELS)
def test_raw_win_rate_matches_leaderboard(model, annotations, leaderboard):
    df = annotations[model]
    row = leaderboard.loc[model]
    out = ae.win_rate_metrics(df["preference"], lengths_model=df["output_2"])
    assert round(out["win_rate"], 4) == round(float(row["win_rate"]), 4) == PUBLISHED_WR[model]
    assert out["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-9)
    assert out["standard_error"] == pytest.approx(float(row["standard_error"]), abs=1e-9)
    assert out["discrete_win_rate"] == pytest.approx(float(row["discrete_win_rate"]), abs=1e-9)
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert out[key] == int(row[key]), key


# --------------------------------------------------------------------------------------------------
# Length-controlled win rate
# --------------------------------------------------------------------------------------------------
def test_surrogate_difficulty_file(difficulty):
    assert len(difficulty) == 805
    assert list(difficulty.index) == list(range(805))
    assert difficulty.notna().all()


def test_lc_from_published_weights_matches_leaderboard(difficulty, leaderboard):
    """Prediction path (upstream ``predict_winrate``) with the published GLM weights.

    Uses the *surrogate* difficulty file; tolerance 1.0 LC point per model (README: about 0.2 on
    average, max about 0.9 with the surrogate); the baseline must be exactly 50.
    """
    weights = ae.load_glm_weights(WEIGHTS)
    checked = [
        "gpt-3.5-turbo-1106",
        "alpaca-7b",
        "gpt-4-turbo-2024-04-09",
        "gpt4_1106_preview_verbose",
        "gpt4_1106_preview_concise",
    ]
    for model in checked:
        lc = ae.predict_lc_win_rate_from_weights(
            weights, difficulty, model=model, baseline=BASELINE
        )["lc_win_rate"]
        assert abs(lc - float(leaderboard.loc[model, "length_controlled_winrate"])) < 1.0, model
    for model, published in PUBLISHED_LC.items():
        lc = ae.predict_lc_win_rate_from_weights(
            weights, difficulty, model=model, baseline=BASELINE
        )["lc_win_rate"]
        assert abs(lc - published) < 1.0, model
    assert (
        ae.predict_lc_win_rate_from_weights(weights, difficulty, model=BASELINE)["lc_win_rate"]
        == 50.0
    )

    common = [m for m in weights.index if m in leaderboard.index]
    errors = np.array(
        [
            ae.predict_lc_win_rate_from_weights(weights, difficulty, model=m, baseline=BASELINE)[
                "lc_win_rate"
            ]
            - float(leaderboard.loc[m, "length_controlled_winrate"])
            for m in common
        ]
    )
    assert len(common) > 150
    assert np.abs(errors).mean() < 0.3 and np.abs(errors).max() < 1.0

    # lc_standard_error (sem of per-instruction predictions) where the leaderboard publishes it
    with_se = [m for m in common if pd.notna(leaderboard.loc[m, "lc_standard_error"])]
    assert len(with_se) >= 20
    for m in with_se:
        se = ae.predict_lc_win_rate_from_weights(weights, difficulty, model=m, baseline=BASELINE)[
            "lc_standard_error"
        ]
        assert se == pytest.approx(float(leaderboard.loc[m, "lc_standard_error"]), abs=0.15), m


# LC refit from the annotations, as computed by upstream's glm_winrate.py on the same inputs
# (surrogate difficulty). Unregularised = no df_gamed rows (upstream's regularize_to_baseline_lambda=None).
UPSTREAM_LC_UNREGULARISED = {
    "gpt-3.5-turbo-1106": (21.4016154803, 0.8490229418),
    "alpaca-7b": (7.1184480399, 0.5370917086),
}
# Regularised (lambda=0.2) with the deterministic synthetic gamed rows of `_synthetic_gamed` below.
UPSTREAM_LC_SYNTHETIC_GAMED = {
    "gpt-3.5-turbo-1106": (19.2782617134, 0.7722577643),
    "alpaca-7b": (5.6259278671, 0.3769526077),
}


def _synthetic_gamed(difficulty: pd.Series) -> pd.DataFrame:
    """Stand-in for upstream df_gamed.csv (NOT real data): two 'gamed baselines' x 805 rows."""
    i = np.arange(len(difficulty))
    rows = []
    for name, sign in (("verbose", -1.0), ("concise", 1.0)):
        sdl = sign * (0.25 + (i % 7) / 4.0)
        pref = 1.0 / (1.0 + np.exp(-(-1.5 * np.tanh(sdl) + 0.8 * difficulty.to_numpy())))
        rows.append(
            pd.DataFrame(
                {
                    "model": name,
                    "index": i,
                    "preference": pref,
                    "std_delta_len": sdl,
                    "instruction_difficulty": difficulty.to_numpy(),
                    "not_gamed_baseline": False,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("model", MODELS)
def test_lc_refit_matches_upstream_code(model, annotations, difficulty, leaderboard):
    df = annotations[model]
    out = ae.length_controlled_win_rate(df, difficulty, return_predictions=True)
    lc, se = UPSTREAM_LC_UNREGULARISED[model]
    assert out["regularized"] is False and out["n_train"] == 805
    assert out["lc_win_rate"] == pytest.approx(lc, abs=1e-5)
    assert out["lc_standard_error"] == pytest.approx(se, abs=1e-5)
    # Without upstream's df_gamed.csv (not available offline) the GLM is not regularised towards the
    # gamed baselines, which moves LC by 1.2-2.1 points here; bound stated loosely on purpose.
    assert (
        abs(out["lc_win_rate"] - float(leaderboard.loc[model, "length_controlled_winrate"])) < 2.5
    )

    # the GLM/prediction path is self-consistent: predicting from the fitted weights = fitted predictions
    pred = ae.predict_lc_win_rate_from_weights(out["weights"], difficulty)
    assert pred["lc_win_rate"] == pytest.approx(out["lc_win_rate"], abs=1e-9)
    assert np.all((out["glm_preferences"] > 0) & (out["glm_preferences"] < 1))

    reg = ae.length_controlled_win_rate(
        df, difficulty, gamed_annotations=_synthetic_gamed(difficulty)
    )
    lc, se = UPSTREAM_LC_SYNTHETIC_GAMED[model]
    assert reg["regularized"] is True and reg["n_train"] == 805 * 3
    assert reg["lc_win_rate"] == pytest.approx(lc, abs=1e-5)
    assert reg["lc_standard_error"] == pytest.approx(se, abs=1e-5)


def test_lc_uses_length_term(annotations, difficulty):
    """Making the model's outputs artificially long must not change its raw preferences but must change LC."""
    df = annotations["alpaca-7b"].copy()
    base = ae.length_controlled_win_rate(df, difficulty)["lc_win_rate"]
    df["output_2"] = df["output_2"] + " padding" * 50
    assert ae.length_controlled_win_rate(df, difficulty)["lc_win_rate"] != pytest.approx(
        base, abs=0.05
    )


def test_lc_baseline_against_itself_and_bad_index(annotations, difficulty):
    df = annotations["alpaca-7b"].copy()
    same = df.assign(generator_2=df["generator_1"], output_2=df["output_1"])
    assert ae.length_controlled_win_rate(same, difficulty)["lc_win_rate"] == 50.0
    shifted = df.set_axis(np.arange(1000, 1000 + len(df)))
    with pytest.raises(ValueError, match="instruction_difficulty"):
        ae.length_controlled_win_rate(shifted, difficulty)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_alpaca_eval(capsys, leaderboard):
    path = DATA / "annotations_gpt-3.5-turbo-1106.json"
    assert (
        cli_main(
            [
                "metrics",
                "alpaca-eval",
                str(path),
                "--instruction-difficulty",
                str(SURROGATE),
                "--gamed-annotations",
                "none",
            ]
        )
        == 0
    )  # the unregularised GLM, asked for explicitly
    out = json.loads(capsys.readouterr().out)
    row = leaderboard.loc["gpt-3.5-turbo-1106"]
    assert out["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-9)
    assert out["standard_error"] == pytest.approx(float(row["standard_error"]), abs=1e-9)
    assert out["discrete_win_rate"] == pytest.approx(float(row["discrete_win_rate"]), abs=1e-9)
    assert out["n"] == 805 and out["avg_length"] == int(row["avg_length"])
    assert out["lc_win_rate"] == pytest.approx(
        UPSTREAM_LC_UNREGULARISED["gpt-3.5-turbo-1106"][0], abs=1e-5
    )
    assert out["lc_standard_error"] > 0
    assert out["difficulty_source"] == f"file:{SURROGATE}"
    assert out["lc_regularized"] is False

    assert (
        cli_main(
            [
                "metrics",
                "alpaca-eval",
                str(path),
                "--instruction-difficulty",
                "none",
                "--gamed-annotations",
                "none",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["lc_win_rate"] is None and out["difficulty_source"] is None
    assert out["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-9)
