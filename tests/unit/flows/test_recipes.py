"""Recipes (configs/methods/*.yaml) and their DAGs, checked without training; faithful data handling
(multi-turn chats, preference pairs); the tiny preset's rule judge. On the tiny tokenizer and a
served judge: tests/integration/flows/test_recipes.py."""

from __future__ import annotations

import json

import pytest

from flows.pipeline import plan
from sgpo.config import CONFIG_DIR, ConfigError, load_config, method_names

PRESETS = ["tiny", "qwen2.5-7b", "llama3-8b", "qwen2-1.5b"]
RECIPES = [
    "sgpo",
    "sgpo-step2",
    "sgpo-dagger",
    "sgpo-double-dagger",
    "sgpo-diamond",
    "sgpo-v1",
    "sgpo-v2",
    "sgpo-v3",
    "all-ref",
    "no-ref",
    "dpo",
    "spin",
    "sapo-dpo",
    "sapo-orpo",
    "sft",
    "sft-continued",
    # the SAPO paper's baselines and ablations (issue 21)
    "orpo",
    "spin-orpo",
    "sapo-dpo-fix-ref",
    "sapo-dpo-policy-ref",
    "sapo-orpo-on-policy",
    "sapo-orpo-no-segment",
    "sapo-orpo-rejected-4",
    "sapo-orpo-rejected-8",
    "sapo-orpo-segment-64",
    "sapo-orpo-segment-128",
]
IMPROVER_STAGES = ["sample", "annotate", "ppl_filter", "improver_sft"]


def test_every_recipe_is_shipped_headed_by_its_command_and_composes_with_every_preset():
    assert method_names() == sorted(RECIPES)
    for name in RECIPES:
        assert (
            (CONFIG_DIR / "methods" / f"{name}.yaml")
            .read_text()
            .startswith(f"# sgpo run tiny method={name}")
        )
        for preset in PRESETS:
            cfg = load_config(preset, [f"method={name}"])
            assert cfg.method == name
            plan(cfg)  # every recipe's DAG can be built for every preset


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError, match="method 'spn' is not a recipe; recipes: all-ref, dpo"):
        load_config("tiny", ["method=spn"])


def _dag(method: str, *overrides: str) -> tuple[dict[str, dict[str, str]], str, list[str]]:
    steps, final = plan(load_config("tiny", [f"method={method}", *overrides]))
    return {s.label: s.inputs for s in steps}, final, [s.stage for s in steps]


# (recipe, stages run besides base_model/prepare/judge, policy the DPO starts from = its reference,
#  the refiner that writes the chosen answers (None: chosen = y_sft), improver training targets)
DAGS = [
    (
        "sgpo",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "improver_sft",
        "improver_sft",
    ),
    (
        "sgpo-dagger",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "sft",
        "improver_sft",
    ),
    (
        "sgpo-double-dagger",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "sft",
        "improver_sft",
    ),
    (
        "sgpo-diamond",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "improver_sft",
        None,
    ),
    ("sgpo-v1", ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"], "sft", "improver_sft"),
    (
        "sgpo-v2",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "improver_sft",
        "improver_sft",
    ),
    (
        "all-ref",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "improver_sft",
        "improver_sft",
    ),
    (
        "no-ref",
        ["sft"] + IMPROVER_STAGES + ["pairs", "ref_logps", "dpo"],
        "improver_sft",
        "improver_sft",
    ),
    ("spin", ["sft", "pairs", "ref_logps", "dpo"], "sft", None),
    ("dpo", ["sft", "ref_logps", "dpo"], "sft", None),
    ("sapo-dpo", ["sft", "sapo"], "sft", None),
]


@pytest.mark.parametrize("method, stages, start, refiner", DAGS, ids=[d[0] for d in DAGS])
def test_each_recipe_runs_only_the_stages_it_needs(method, stages, start, refiner):
    dag, final, run = _dag(method)
    assert [s for s in run if s not in ("base_model", "prepare", "judge")] == stages
    if method.startswith("sapo"):
        assert final == "sapo" and dag["sapo"] == {"policy": "sft", "data": "prepare[sapo]"}
        assert (
            _dag(method, "start=base")[0]["sapo"]["policy"] == "base_model"
        )  # e.g. mistral-7b-zephyr-sft
        return
    assert (
        final == "dpo" and dag["dpo"]["start"] == start
    )  # the DPO reference is its starting policy
    assert dag["judge"]["policy"] == "dpo"
    # the reference log-probs of the DPO step: its start model on its pairs, before it
    assert dag["ref_logps"] == {"reference": start, "pairs": dag["dpo"]["pairs"]}
    assert dag["dpo"]["ref_logps"] == "ref_logps"
    live, _, run_live = _dag(
        method,
        f"{'dpo_baseline' if method == 'dpo' else 'spin' if method == 'spin' else 'dpo'}.reference_logps=live",
    )
    assert "ref_logps" not in run_live and "ref_logps" not in live["dpo"]
    if method == "dpo":
        assert dag["dpo"]["pairs"] == "prepare[prefs]"  # the published pairs, nothing generated
        return
    assert dag["pairs"]["policy"] == start  # rejected = the answers of the policy being trained
    assert dag["pairs"].get("improver") == refiner


def test_ablation_flags_reach_the_sections_the_stages_read():
    assert load_config("tiny", ["method=sgpo-double-dagger"]).improver_sft.targets == ["ext"]
    assert load_config("tiny", ["method=all-ref"]).improver_sft.with_reference is True
    assert load_config("tiny", ["method=no-ref"]).pairs.refine_with_reference is False
    assert load_config("tiny", ["method=sgpo-diamond"]).pairs.chosen == "sft"
    # the recipe's flags, then the user's overrides
    assert load_config("tiny", ["method=sgpo-dagger", "rounds=2"]).rounds == 2


def test_step2_refines_with_the_round_policy_in_shared_mode_and_with_the_fixed_improver_in_dagger():
    dag, final, _ = _dag("sgpo-step2")
    assert final == "dpo[2]"
    assert dag["pairs[1]"] == {
        "policy": "improver_sft",
        "improver": "improver_sft",
        "data": "prepare[po]",
    }
    assert dag["pairs[2]"] == {
        "policy": "dpo[1]",
        "improver": "dpo[1]",
        "data": "prepare[po]",
    }  # pi_SGPO refines
    assert dag["dpo[2]"]["start"] == "dpo[1]"
    dag, _, _ = _dag("sgpo-dagger", "rounds=3")
    assert [dag[f"pairs[{r}]"]["improver"] for r in (1, 2, 3)] == ["improver_sft"] * 3
    assert [dag[f"pairs[{r}]"]["policy"] for r in (1, 2, 3)] == ["sft", "dpo[1]", "dpo[2]"]


def test_spin_iterations_start_each_from_the_last():
    dag, final, run = _dag("spin", "spin.iterations=3")
    assert final == "dpo[3]" and "annotate" not in run and "sample" not in run
    assert [dag[f"pairs[{t}]"]["policy"] for t in (1, 2, 3)] == ["sft", "dpo[1]", "dpo[2]"]
    assert [dag[f"dpo[{t}]"]["start"] for t in (1, 2, 3)] == ["sft", "dpo[1]", "dpo[2]"]
    assert [dag[f"ref_logps[{t}]"]["reference"] for t in (1, 2, 3)] == ["sft", "dpo[1]", "dpo[2]"]
    steps, _ = plan(load_config("tiny", ["method=spin"]))
    assert {s.label: s.section for s in steps}["dpo"] == "spin[1]"  # SPIN's own learning rate


def test_spin_iterations_can_change_lr_and_beta_as_the_sapo_papers_baseline_does():
    from flows.pipeline import recipe_section

    # SAPO paper Sec. 5.1: lr 5e-7 for the first two iterations, 1e-7 for the remaining two, beta
    # 5.0 in the final one, three epochs each, configured as its DPO (RMSprop)
    cfg = load_config("sapo-llama3-8b", ["method=spin"])
    trained = [recipe_section(cfg, f"spin[{t}]") for t in (1, 2, 3, 4)]
    assert [(c.learning_rate, c.beta, c.epochs, c.optimizer) for c in trained] == [
        (5e-7, 0.1, 3, "rmsprop"),
        (5e-7, 0.1, 3, "rmsprop"),
        (1e-7, 0.1, 3, "rmsprop"),
        (1e-7, 5.0, 3, "rmsprop"),
    ]
    with pytest.raises(Exception, match="learning_rate"):
        load_config(
            "tiny", ["method=spin", "spin.per_iteration=[{learning_rate: 2}]"]
        ).spin.for_iteration(1)


def test_a_spin_like_sgpo_variant_never_annotates():
    _, _, run = _dag("sgpo", "shared_improver=false", "pairs.chosen=sft")
    assert not set(IMPROVER_STAGES) & set(run)


def test_recipes_that_cannot_run_say_why():
    with pytest.raises(ConfigError, match="pairs.chosen must be 'sft'"):
        plan(load_config("tiny", ["method=spin", "pairs.chosen=refined"]))
    with pytest.raises(ConfigError, match="needs data.prefs"):
        plan(load_config("tiny", ["method=dpo", "data.prefs=null"]))


def test_paper_presets_follow_the_paper():
    for preset in ("qwen2.5-7b", "llama3-8b", "qwen2-1.5b"):
        cfg = load_config(preset)
        assert cfg.sft.max_length == cfg.improver_sft.max_length == cfg.dpo.max_length == 2048
        # SFT on whole UltraChat dialogues: one example per dialogue, every answer a target
        assert (cfg.data.sft.turns, cfg.sft.assistant_turns) == ("last", "all")
        assert (cfg.data.prefs.path, cfg.data.prefs.split, cfg.data.prefs.preference_pairs) == (
            "allenai/ultrafeedback_binarized_cleaned",
            "train_prefs",
            True,
        )
        assert (cfg.dpo_baseline.epochs, cfg.dpo_baseline.learning_rate, cfg.dpo_baseline.beta) == (
            1,
            5e-7,
            0.01,
        )
        assert cfg.spin.iterations == 1
    assert load_config("qwen2.5-7b").spin.learning_rate == 3e-7
    assert load_config("llama3-8b").spin.learning_rate == 5e-7
    assert load_config("llama3-8b").sft.chat_template == "chatml"  # the base model has none


def test_set_like_fields_give_one_cache_key():
    from artifacts.refs import ArtifactRef
    from tasks import get_stage

    st = get_stage("improver_sft")
    refs = {
        n: ArtifactRef(uri="u", kind="table", stage="s", cache_key="k", content_hash=n)
        for n in st.inputs
    }
    keys = {
        st.cache_key(load_config("tiny", [f"improver_sft.targets={t}"]).improver_sft, refs)
        for t in ("[imp,ext]", "[ext,imp]", "[ext,imp,ext]")
    }
    assert len(keys) == 1


def test_pairs_without_a_refiner_do_not_depend_on_one():
    from artifacts.refs import ArtifactRef
    from tasks import get_stage

    st = get_stage("pairs")
    ref = lambda h: ArtifactRef(uri="u", kind="model", stage="s", cache_key="k", content_hash=h)  # noqa: E731
    cfg = load_config("tiny", ["method=spin"]).pairs
    assert st.cache_key(cfg, {"policy": ref("p"), "data": ref("d")}) != st.cache_key(
        cfg, {"policy": ref("p"), "data": ref("d"), "improver": ref("i")}
    )
    assert "improver" in st.optional_inputs


# ------------------------------------------------------------------------------------ data
def _normalize(rows, **spec):
    from sgpo.config import DatasetSpec
    from tasks.prepare import normalize_rows

    columns = sorted({k for r in rows for k in r})
    return normalize_rows(rows, columns, DatasetSpec(path="x.jsonl", **spec))


DIALOGUE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def test_a_multi_turn_chat_keeps_every_turn_before_its_final_answer():
    rows, dropped = _normalize([{"id": "a", "messages": DIALOGUE}])
    assert dropped == 0 and len(rows) == 1
    r = rows[0]
    assert (r["prompt"], r["reference"]) == ("Capital of France?", "Paris.")
    assert (
        json.loads(r["messages"]) == DIALOGUE[:4]
    )  # system + first exchange + the final user turn


def test_turns_all_makes_one_example_per_assistant_turn():
    rows, _ = _normalize([{"id": "a", "messages": DIALOGUE}], turns="all")
    assert [(r["prompt_id"], r["prompt"], r["reference"]) for r in rows] == [
        ("a/0", "Hi", "Hello!"),
        ("a/1", "Capital of France?", "Paris."),
    ]
    assert json.loads(rows[0]["messages"]) == DIALOGUE[:2]


def test_chats_without_a_usable_final_answer_are_dropped_and_counted():
    bad = [
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "assistant", "content": "no question"}]},
        {"messages": "not a chat"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "   "}]},
    ]
    rows, dropped = _normalize(bad + [{"messages": DIALOGUE[1:3]}])
    assert dropped == 4 and [r["reference"] for r in rows] == ["Hello!"]


def test_preference_pairs_from_chats_and_from_strings():
    chat = {
        "prompt_id": "p1",
        "chosen": DIALOGUE,
        "rejected": DIALOGUE[:4] + [{"role": "assistant", "content": "Rome."}],
    }
    other_prompt = {
        "prompt_id": "p2",
        "chosen": DIALOGUE,
        "rejected": [
            {"role": "user", "content": "Something else"},
            {"role": "assistant", "content": "x"},
        ],
    }
    rows, dropped = _normalize([chat, other_prompt], preference_pairs=True)
    assert dropped == 1  # the two answers follow different conversations: not a pair
    (r,) = rows
    assert (r["chosen"], r["rejected"], r["reference"], r["prompt"]) == (
        "Paris.",
        "Rome.",
        "Paris.",
        "Capital of France?",
    )
    assert json.loads(r["messages"]) == DIALOGUE[:4]
    rows, _ = _normalize(
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], preference_pairs=True
    )
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("2+2?", "4", "5")


def test_the_dpo_baseline_trains_on_the_source_pairs_as_published(tmp_path):
    from sgpo.config import StoreConfig
    from sgpo.core import StageContext, run_stage
    from sgpo.data.sources import BUNDLED_DIR
    from tasks import get_stage

    cfg = load_config("tiny", ["method=dpo", "data.prefs.max_rows=null"])
    ctx = StageContext(store=StoreConfig(url=str(tmp_path)))
    ref = run_stage(get_stage("prepare"), cfg.data.prefs, ctx, {})
    table = ctx.open_store().read_table(ref).to_pylist()
    source = [
        json.loads(line)
        for line in (BUNDLED_DIR / "tiny_prefs" / "prefs.jsonl").read_text().splitlines()
    ]
    assert [(r["chosen"], r["rejected"]) for r in table] == [
        (s["chosen"][-1]["content"].strip(), s["rejected"][-1]["content"].strip()) for s in source
    ]


# ------------------------------------------------------------------------------------ tiny judge
def test_the_rule_judge_scores_by_its_documented_rule():
    from sgpo.llm.rule_judge import p_first, quality

    # 30 distinct words, none in the instruction: distinct 1, fullness 1, relevance 0
    long_answer = " ".join(f"w{i}" for i in range(30))
    assert quality(long_answer, "Say hello") == pytest.approx(1.0)
    # "hello hello": distinct 1/2, fullness 2/30, relevance |{hello}| / |{say, hello}| = 1/2
    assert quality("hello hello", "Say hello") == pytest.approx(0.5 * 2 / 30 + 0.5 * 0.5)
    assert quality("", "Say hello") == 0.0
    a, b = long_answer, "hello hello"
    assert p_first(a, b, "Say hello") == pytest.approx(
        1 - p_first(b, a, "Say hello")
    )  # order cannot matter


# ------------------------------------------------------------------------------------------ data checks
def test_data_checks_add_pairwise_stages_on_the_annotate_table_and_each_rounds_pairs():
    dag, final, run = _dag("sgpo-step2", "checks.improved_data=true", "checks.refinement=true")
    checks = {label: inputs for label, inputs in dag.items() if label.startswith("pairwise[")}
    # Fig. 8/10 (Sec. 4.4.2): the self-improver's refinements vs the INITIAL policy's refinements of
    # the same answers (a refine step by pi_sft on each round's pairs) and vs y_sft
    assert checks == {
        "pairwise[imp_vs_policy]": {"table": "annotate"},
        "pairwise[imp_vs_reference]": {"table": "annotate"},
        "pairwise[refined_vs_initial]": {"table": "refine[initial]"},
        "pairwise[refined_vs_reference]": {"table": "pairs[1]"},
        "pairwise[refined_vs_initial.r2]": {"table": "refine[initial.r2]"},
        "pairwise[refined_vs_reference.r2]": {"table": "pairs[2]"},
    }
    assert dag["refine[initial]"] == {"refiner": "sft", "pairs": "pairs[1]"}
    assert dag["refine[initial.r2]"] == {"refiner": "sft", "pairs": "pairs[2]"}
    assert final == "dpo[2]" and run.index("judge") < run.index(
        "pairwise"
    )  # after the judge: it never delays it
    assert not any(
        label.startswith("pairwise") for label in _dag("sgpo")[0]
    )  # off by default: paid calls


def test_a_data_check_is_judged_by_the_pipelines_judge_on_the_checks_columns():
    from flows.pipeline import recipe_section

    cfg = load_config(
        "tiny",
        [
            "checks.refinement=true",
            "checks.max_rows=5",
            "judge.endpoint.model=gpt-4-1106-preview",
            "judge.top_logprobs=7",
        ],
    )
    sec = recipe_section(cfg, "checks[refined_vs_reference.r2]")
    assert (sec.name, sec.model_column, sec.baseline_column, sec.instruction_column) == (
        "refined_vs_reference.r2",
        "chosen",
        "reference",
        "prompt",
    )
    assert (
        sec.endpoint.model == "gpt-4-1106-preview" and sec.top_logprobs == 7 and sec.max_rows == 5
    )
    imp = recipe_section(cfg, "checks[imp_vs_policy]")
    assert (imp.model_column, imp.baseline_column) == ("imp", "policy")


def test_data_checks_a_recipe_cannot_make_say_why():
    with pytest.raises(ConfigError, match="checks.improved_data: method dpo does not annotate"):
        plan(load_config("tiny", ["method=dpo", "checks.improved_data=true"]))
    with pytest.raises(
        ConfigError, match="checks.refinement: method sgpo-diamond has no refined pairs"
    ):
        plan(load_config("tiny", ["method=sgpo-diamond", "checks.refinement=true"]))
    with pytest.raises(ConfigError, match="checks.refinement: method spin has no refined pairs"):
        plan(load_config("tiny", ["method=spin", "checks.refinement=true"]))
