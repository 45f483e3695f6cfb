"""The testbed (docs/testbed.md): tasks and score, the oracle annotator and verifier judge over the
real server and clients, the preset's DAG, and a fast regression of the method's effect."""

from __future__ import annotations

import random

import pytest

from sgpo.data.testbed import (
    HABIT,
    TASKS,
    _instance,
    corrupt,
    exact,
    generate,
    gold,
    minimal_improvement,
    parse_instruction,
    quality,
    render,
    score_answers,
)


def test_tasks_parse_from_the_instruction_and_score_with_partial_credit():
    assert parse_instruction("Sort the list: 3 1 4 1") == ("sort", [3, 1, 4, 1])
    assert gold("Reverse the list: 3 1 4") == [4, 1, 3]
    assert gold("Remove duplicates from the list: 3 1 3 2") == [3, 1, 2]
    assert gold("Count the items in the list: 3 1 3 2") == [4]
    assert gold("Write a poem") is None
    x = "Sort the list: 3 1 4 1"
    assert quality("1 1 3 4", x) == 1.0 and exact("1 1 3 4", x)
    assert quality("1 1 3 4" + HABIT, x) == 0.5 and not exact(
        "1 1 3 4" + HABIT, x
    )  # the habit halves the score
    assert quality("1 1 3 9", x) == 0.75  # one wrong item of four
    assert quality("1 1 3", x) == 0.75 and quality("1 1 3 4 4", x) == 0.8  # too short / too long
    assert quality("", x) == 0.0


def test_the_data_are_deterministic_and_the_defect_is_only_in_the_sft_split():
    a, b = generate(3, {"sft": 200, "po": 50}), generate(3, {"sft": 200, "po": 50})
    assert a == b
    habit = sum(r["response"].endswith(HABIT) for r in a["sft"]) / 200
    assert 0.3 < habit < 0.5
    assert not any(r["response"].endswith(HABIT) for r in a["po"])
    assert all(exact(r["response"], r["prompt"]) for r in a["po"])
    assert not {r["prompt"] for r in a["po"]} & {r["prompt"] for r in a["sft"]}


def test_the_oracle_edit_moves_b_toward_gold_never_past_a():
    rng = random.Random(0)
    for _ in range(2000):
        x, g = _instance(rng, rng.choice(list(TASKS)))
        b = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(0, 8))) + (
            HABIT if rng.random() < 0.4 else ""
        )
        a = corrupt(rng, g) if rng.random() < 0.5 else render(g)
        y = minimal_improvement(x, a, b)
        assert quality(b, x) <= quality(y, x) <= max(quality(a, x), quality(b, x)) + 1e-9
        if a == render(g):
            assert y == render(g)
    # minimal: one wrong item of a clean reference caps the fix one step short
    x = "Sort the list: 3 1 4 1"
    assert minimal_improvement(x, "1 1 3 9", "4 3 4 1" + HABIT) == "1 1 3 1"


def test_oracle_and_verifier_answer_the_real_prompts_over_http(tmp_path):
    """annotate (the stage's own request builder) and the pairwise judge, through the openai client."""
    from artifacts.store import ArtifactStore
    from sgpo.config import AnnotateStageConfig, PairJudgeConfig
    from sgpo.evals.pairwise import PairJudge, judge_pairs
    from sgpo.llm.client import call_all
    from sgpo.llm.oracle import TestbedBackend
    from sgpo.llm.server import build_app, running_server
    from tasks.annotate import build_requests

    class NoModel:
        def chat(self, *a, **k):
            raise AssertionError("the oracle should have answered")

    x = "Reverse the list: 1 2 3 4"
    rows = [{"prompt": x, "reference": "4 3 2 1", "policy": "4 3 9 1" + HABIT}]
    with running_server(
        build_app(TestbedBackend(NoModel(), judge=True, annotator=True), model_name="tb")
    ) as url:
        cfg = AnnotateStageConfig.model_validate(
            {"endpoint": {"base_url": url, "model": "tb", "api_key_env": "NONE"}}
        )
        res = call_all(
            build_requests(rows, cfg),
            cfg.endpoint,
            journal_url=str(tmp_path / "calls"),
            namespace="t",
        )
        texts = {r.key: r.text for r in res.records}
        assert texts == {"0/imp": "4 3 2 1", "0/ext": "4 3 2 1"}
        jcfg = PairJudgeConfig.model_validate(
            {"endpoint": {"base_url": url, "model": "tb", "api_key_env": "NONE"}}
        )
        pairs = [
            (x, "4 3 2 1", "4 3 2 1" + HABIT),
            (x, "4 3 2 9", "4 3 2 1"),
            (x, "1 2 3 4", "4 3 2 1"),
        ]
        results, _ = judge_pairs(
            pairs, PairJudge.from_config(jcfg), store=ArtifactStore(str(tmp_path / "store"))
        )
    prefs = [r["preference"] for r in results]
    assert (
        prefs[0] < 1.05 and prefs[1] > 1.85 and prefs[2] > 1.99
    )  # 1 = the baseline (first) better


def test_the_preset_runs_sgpo_and_reports_against_pi_sft():
    from flows.pipeline import plan
    from sgpo.config import load_config
    from sgpo.llm.embedded import embedded_model_name
    from sgpo.llm.oracle import ORACLE_MODEL_NAME, VERIFIER_MODEL_NAME

    cfg = load_config("testbed")
    steps, final = plan(cfg)
    dag = {s.label: s.inputs for s in steps}
    assert final == "dpo" and dag["judge[sft]"]["policy"] == "sft"
    assert dag["testbed_report"] == {"final": "judge", "sft": "judge[sft]"}

    def name(section):
        return embedded_model_name(
            section, judge=cfg.embedded_llm.judge, annotator=cfg.embedded_llm.annotator
        )

    assert name(cfg.judge) == VERIFIER_MODEL_NAME and name(cfg.annotate) == ORACLE_MODEL_NAME
    sft_dag = {s.label: s.inputs for s in plan(load_config("testbed", ["method=sft"]))[0]}
    assert "judge[sft]" not in sft_dag and sft_dag["testbed_report"] == {
        "final": "judge",
        "sft": "judge",
    }
    cont = {s.label: s.inputs for s in plan(load_config("testbed", ["method=sft-continued"]))[0]}
    assert cont["sft_continued"] == {"base": "sft", "data": "prepare[po]"}
    assert score_answers([("Count the items in the list: 1 2", "2")])["exact_match"] == 1.0


def test_the_method_effect_regression():
    """Fast regression of the method's effect (tests/testbed_probe.py; margins and noise in docs/testbed.md,
    "Fast regression"): one round of DPO+NLL with the oracle's minimal fixes of the policy's samples as
    chosen removes pi_sft's verbosity habit, and the same pairs with chosen and rejected swapped (a
    wiring bug) score clearly below the correct wiring. Measured on seeds 0/1/2: habit 0.30/0.25/0.14 ->
    0.00 with the method; score method - swapped = +0.043/+0.034/+0.041 (SE of the difference ~0.012)."""
    from tests.helpers.testbed_probe import probe

    r = probe(seed=0, variants=("method", "swapped"))
    sft, good, bad = r["sft"], r["method"], r["swapped"]
    assert good["habit_rate"] < sft["habit_rate"] - 0.10, r
    assert good["mean_quality"] > bad["mean_quality"] + 0.015, r


@pytest.mark.slow
def test_the_full_testbed_comparison(tmp_path):
    """benchmarks/testbed.py over every testbed recipe and 3 seeds (about 11 minutes on 2 cores):
    every row fills, and every method removes most of pi_sft's habit (docs/testbed.md, H1)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    import testbed as bench

    assert (
        bench.main(
            [
                "-o",
                str(tmp_path / "out"),
                f"store.url={tmp_path / 'store'}",
                "tracking.enabled=false",
            ]
        )
        == 0
    )
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "testbed.json").read_text())}
    assert set(rows) == set(bench.METHODS) and all(r["seeds"] == 3 for r in rows.values())
    assert all(
        rows[m]["habit"][0] < rows["sft"]["habit"][0] / 2 for m in bench.METHODS if m != "sft"
    )
