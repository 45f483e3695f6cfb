"""Arena-Hard v0.1 scoring: verdict parsing, battles, Bradley-Terry, bootstrap, published files.

Reference data: ``$SGPO_SHARED_DATA`` or ``<repo>/../shared/data`` (``arena_hard/``); tests that need
it are skipped with a reason when it is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sgpo.cli.metrics import main as cli_main
from sgpo.data.shared import shared_data_dir
from sgpo.evals.arena_hard import metrics as ah

DATA = shared_data_dir() / "arena_hard"
SAMPLE = DATA / "judgment_sample_Pythia-12B-DPO-UltraFeedback.jsonl"
SAMPLE_MODEL = "Pythia-12B-DPO-UltraFeedback"


def _require_data() -> None:
    if not DATA.is_dir():
        pytest.skip(
            f"offline Arena-Hard reference data not found at {DATA} (set SGPO_SHARED_DATA or provide ../shared/data)"
        )


def _rec(model: str, qid: str, game1: str | None, game2: str | None) -> dict:
    return {"question_id": qid, "model": model, "games": [{"score": game1}, {"score": game2}]}


# --------------------------------------------------------------------------------------------------
# Verdict parsing
# --------------------------------------------------------------------------------------------------
def test_parse_label_clean_missing_conflicting():
    assert ah.parse_label("Long reasoning...\nMy final verdict is tie: [[A=B]].") == "A=B"
    assert ah.parse_label("Assistant B is significantly better: [[B>>A]]") == "B>>A"
    # the same label repeated is fine
    assert ah.parse_label("[[A>B]] ... so my final verdict is [[A>B]]") == "A>B"
    # missing -> None, and upstream would ask the judge to continue
    assert ah.parse_label("Both answers are fine.") is None
    assert ah.get_score("Both answers are fine.") == (None, True)
    # conflicting distinct labels -> None, without a retry
    assert ah.parse_label("First [[A>B]], on reflection [[B>A]]") is None
    assert ah.get_score("First [[A>B]], on reflection [[B>A]]") == (None, False)
    # v0.1 pattern needs double brackets and upper-case labels
    assert ah.parse_label("My verdict: [A>B]") is None
    assert ah.parse_label("My verdict: [[a>b]]") is None
    # a custom fallback pattern is only tried when the first matches nothing
    patterns = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")
    assert ah.parse_label("My verdict: [A>B]", patterns) == "A>B"
    assert ah.parse_label("[[B>A]] and [A>B]", patterns) == "B>A"


# --------------------------------------------------------------------------------------------------
# Battles
# --------------------------------------------------------------------------------------------------
def test_battles_counts_and_weights():
    records = [
        _rec(
            "m", "q1", "A>>B", "A>>B"
        ),  # game1: baseline strongly; game2 (swapped): model strongly
        _rec("m", "q2", "B>A", "B>A"),  # game1: model; game2: baseline
        _rec("m", "q3", "A=B", None),  # tie; missing label skipped
        _rec("m", "q4", "A<B", "garbage"),  # labels outside the table are skipped
    ]
    b = ah.battles_from_judgments(records, baseline="base")
    assert list(b.columns) == ["question_id", "model_a", "model_b", "winner"]
    assert (b["model_a"] == "base").all() and (b["model_b"] == "m").all()
    assert len(b) == 3 + 3 + 1 + 1 + 1
    assert b[b.question_id == "q1"]["winner"].tolist() == ["model_a"] * 3 + ["model_b"] * 3
    assert b[b.question_id == "q2"]["winner"].tolist() == ["model_b", "model_a"]
    assert b[b.question_id == "q3"]["winner"].tolist() == ["tie"]
    assert (b.question_id == "q4").sum() == 0

    assert len(ah.battles_from_judgments(records, baseline="base", weight=1)) == 1 + 1 + 1 + 1 + 1
    first = ah.battles_from_judgments(records, baseline="base", first_game_only=True)
    assert first["winner"].tolist() == ["model_a"] * 3 + ["model_b", "tie"]
    # a mapping model -> records works too (model filled in)
    by_model = {"m": [{k: v for k, v in r.items() if k != "model"} for r in records]}
    assert ah.battles_from_judgments(by_model, baseline="base").equals(b)


# --------------------------------------------------------------------------------------------------
# Bradley-Terry / win rates
# --------------------------------------------------------------------------------------------------
def test_bt_symmetric_results_give_fifty_percent():
    # per question: baseline wins game 1, model wins game 2 (A>B in both games) -> perfectly balanced
    records = [_rec("m", f"q{i}", "A>B", "A>B") for i in range(10)]
    out = ah.score(records, baseline="base", rounds=5, seed=0)
    assert out["m"]["score"] == pytest.approx(50.0, abs=1e-4)
    assert out["m"]["elo"] == pytest.approx(1000.0, abs=0.01)


def test_bt_two_player_closed_form():
    # 3 baseline wins (game 1) + 1 model win (game 2 of q0); with ties counted half each.
    records = [
        _rec("m", "q0", "A>B", "B>A"),
        _rec("m", "q1", "A>B", None),
        _rec("m", "q2", "A=B", None),
    ]
    # rows: q0 -> model_a, model_a; q1 -> model_a; q2 -> tie  => p(model) = (0 + 0.5) / 4
    elo = ah.compute_mle_elo(
        ah.battles_from_judgments(records, baseline="base"), baseline_model="base"
    )
    assert elo["base"] == pytest.approx(1000.0)
    p = ah.predict_win_rate(elo.to_dict()).loc["m", "base"]
    assert p == pytest.approx(0.5 / 4, abs=1e-6)
    assert ah.predict_win_rate({"x": 1400.0, "y": 1000.0}).loc["x", "y"] == pytest.approx(
        1 / (1 + 10**-1)
    )


def test_bt_separable_data_does_not_crash():
    records = [_rec("m", f"q{i}", "A>>B", "B>>A") for i in range(3)]  # baseline always wins
    elo = ah.compute_mle_elo(
        ah.battles_from_judgments(records, baseline="base"), baseline_model="base"
    )
    assert elo["base"] == 1000.0 and elo["m"] < 0
    assert ah.score(records, baseline="base", rounds=3)["m"]["score"] < 1e-6


def _three_model_records(seed: int = 7) -> list[dict]:
    rng = np.random.RandomState(seed)
    labels = ["A>>B", "A>B", "A=B", "B>A", "B>>A", None]
    probs = {"weak": [0.35, 0.3, 0.2, 0.1, 0.03, 0.02], "strong": [0.03, 0.1, 0.2, 0.3, 0.35, 0.02]}
    # game 2 shows the model as A: mirror the label so that the same quality gap is expressed
    mirror = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B", None: None}
    return [
        _rec(m, f"q{q}", labels[rng.choice(6, p=p)], mirror[labels[rng.choice(6, p=p)]])
        for m, p in probs.items()
        for q in range(40)
    ]


def test_bootstrap_is_deterministic_and_anchored():
    battles = ah.battles_from_judgments(_three_model_records(), baseline="base")
    b1 = ah.bootstrap(battles, rounds=8, seed=123, baseline_model="base")
    b2 = ah.bootstrap(battles, rounds=8, seed=123, baseline_model="base")
    b3 = ah.bootstrap(battles, rounds=8, seed=124, baseline_model="base")
    assert b1.shape == (8, 3)
    pd.testing.assert_frame_equal(b1, b2)
    assert not np.allclose(b1[["weak", "strong"]].to_numpy(), b3[["weak", "strong"]].to_numpy())
    assert np.allclose(b1["base"], 1000.0)
    assert list(b1.columns) == list(b1.median().sort_values(ascending=False).index)


def test_score_orders_models_and_brackets_point_estimate():
    out = ah.score(_three_model_records(), baseline="base", rounds=20, seed=42)
    assert set(out) == {"weak", "strong"}
    assert out["strong"]["score"] > 50 > out["weak"]["score"]
    for m in out.values():
        assert m["ci_low"] <= m["score"] <= m["ci_high"]
        assert m["n"] == 40


# --------------------------------------------------------------------------------------------------
# Official files
# --------------------------------------------------------------------------------------------------
def test_judgment_sample_processed_as_official():
    _require_data()
    records = ah.load_judgments(SAMPLE)
    assert len(records) == 12 and {r["model"] for r in records} == {SAMPLE_MODEL}
    battles = ah.battles_from_judgments(records)
    # game 1: 8 x A>>B (x3) + 3 x A>B + 1 x A=B = 28 rows; game 2: 9 x B>>A (x3) + 3 x B>A = 30 rows
    assert len(battles) == 58
    assert battles["winner"].value_counts().to_dict() == {"model_a": 57, "tie": 1}
    assert (battles["model_a"] == "gpt-4-0314").all()
    # the stored `score` fields equal re-parsing the judgment texts with the official regex
    assert ah.battles_from_judgments(records, reparse=True).equals(battles)
    assert len(ah.battles_from_judgments(records, first_game_only=True)) == 28

    out = ah.score(records, rounds=10)[SAMPLE_MODEL]
    # two players only: the BT MLE equals the empirical rate, the single tie counting one half in
    # the duplicated-battles design -> 1 / (2 * 58)
    assert out["score"] == pytest.approx(100 / 116, abs=1e-6)
    assert out["n"] == 12 and out["n_battles"] == 58
    assert out["ci_low"] <= out["score"] <= out["ci_high"]


def test_published_bootstrap_and_leaderboard_conventions():
    """95% CIs are the 2.5/97.5 percentiles with linear interpolation; CI strings as published."""
    _require_data()
    with open(DATA / "bootstrap_stats_arena_hard.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 28
    for row in rows:
        lo, hi = ah.percentile_interval(row["results"])
        assert lo == pytest.approx(row["lower"], abs=1e-9), row["model"]
        assert hi == pytest.approx(row["upper"], abs=1e-9), row["model"]

    lb = pd.read_csv(DATA / "leaderboard_20240731.csv")
    assert len(lb) >= 50
    for _, r in lb.iterrows():
        assert ah.format_ci(r["score"], r["rating_q025"], r["rating_q975"]) == r["CI"], r["model"]
    assert lb.set_index("model").loc["gpt-4-0314", "score"] == 50.0


def test_cli_arena_hard(capsys):
    _require_data()
    assert cli_main(["metrics", "arena-hard", str(SAMPLE), "--rounds", "10", "--seed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["baseline"] == "gpt-4-0314" and out["rounds"] == 10 and out["seed"] == 0
    m = out["models"][SAMPLE_MODEL]
    assert m["score"] == pytest.approx(100 / 116, abs=1e-6)
    assert m["n"] == 12 and m["ci_low"] <= m["score"] <= m["ci_high"]
