"""The testbed (docs/testbed.md): tasks and score, the data, the oracle's edit, the preset's DAG. The
oracle and verifier over the real server and the fast regression of the method's effect:
tests/integration/data/test_testbed.py; the full comparison (slow): tests/e2e/test_testbed.py."""

from __future__ import annotations

import random

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
