"""The stage declarations: what each stage is, that its cache key covers its config, and the one
registry every list of stages derives from (the layering rules: tests/unit/test_layering.py).

No model, no Prefect run: these are checks on the declarations themselves."""

from __future__ import annotations

import typing
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from artifacts.refs import ArtifactRef
from sgpo.config import NOT_IN_CACHE_KEY, EvaluationConfig, PairwiseConfig, load_config
from tasks import ALL_STAGES, EVALUATION_STAGES, PIPELINE_STAGES, get_stage
from tasks.report import ReportConfig

# What each stage reads and which section of its recipe configures it (the DAG's contract).
EXPECTED = {
    "prepare": ((), "data.<role>"),
    "base_model": ((), "model"),
    "sft": (("base", "data"), "sft"),
    "sample": (("policy", "data"), "sample"),
    "annotate": (("samples",), "annotate"),
    "ppl_filter": (("policy", "annotations"), "ppl_filter"),
    "improver_sft": (("start", "filtered"), "improver_sft"),
    "pairs": (("policy", "improver", "data"), "pairs"),
    "ref_logps": (("reference", "pairs"), "dpo"),
    "dpo": (("start", "pairs", "ref_logps"), "dpo"),
    "sapo": (("policy", "data"), "sapo"),
    "orpo": (("start", "pairs"), "orpo"),
    "refine": (("refiner", "pairs"), "pairs"),
    "judge": (("policy", "data"), "judge"),
    "testbed_report": (("final", "sft"), "judge"),
    "alpaca_eval_generate": (("model",), "alpaca_eval"),
    "alpaca_eval_judge": (("answers",), "alpaca_eval"),
    "arena_hard_generate": (("model",), "arena_hard"),
    "arena_hard_judge": (("answers",), "arena_hard"),
    "pairwise": (("table",), "pairwise.<name>"),
    "mt_bench_generate": (("model",), "mt_bench"),
    "mt_bench_judge": (("answers",), "mt_bench"),
    "lm_eval": (("model",), "lm_eval"),
    "report": ((), "report"),
}


def test_every_stage_is_declared_with_its_inputs_and_section():
    assert set(ALL_STAGES) == set(EXPECTED)
    for name, (inputs, section) in EXPECTED.items():
        st = get_stage(name)
        assert (st.name, st.inputs, st.section) == (name, inputs, section), name
    # the GPU stages are those that run a model (the CUDA pool serves them); the LLM stages are those that call one
    assert {n for n in ALL_STAGES if get_stage(n).gpu} == {
        "ref_logps",
        "sft",
        "sample",
        "ppl_filter",
        "improver_sft",
        "pairs",
        "dpo",
        "sapo",
        "orpo",
        "refine",
        "judge",
        "alpaca_eval_generate",
        "arena_hard_generate",
        "mt_bench_generate",
        "lm_eval",
    }
    assert {n for n in ALL_STAGES if get_stage(n).llm} == {
        "annotate",
        "judge",
        "alpaca_eval_judge",
        "arena_hard_judge",
        "pairwise",
        "mt_bench_judge",
        "testbed_report",
    }
    assert get_stage("alpaca_eval_generate").params == ("model_name",)


def test_the_registry_derives_every_list_of_stages():
    from flows.pipeline import FORCEABLE
    from flows.stages import STAGE_FLOWS

    # the pipeline runs what its recipes can plan, the evaluation flow its benchmarks; both share
    # base_model, pairwise (the data checks) and report
    assert set(PIPELINE_STAGES) == {
        "prepare",
        "base_model",
        "sft",
        "sample",
        "annotate",
        "ppl_filter",
        "improver_sft",
        "pairs",
        "ref_logps",
        "dpo",
        "sapo",
        "orpo",
        "refine",
        "judge",
        "testbed_report",
        "pairwise",
        "report",
    }
    assert set(EVALUATION_STAGES) == {
        "base_model",
        "alpaca_eval_generate",
        "alpaca_eval_judge",
        "arena_hard_generate",
        "arena_hard_judge",
        "pairwise",
        "mt_bench_generate",
        "mt_bench_judge",
        "lm_eval",
        "report",
    }
    assert set(PIPELINE_STAGES) | set(EVALUATION_STAGES) == set(ALL_STAGES)
    assert FORCEABLE == PIPELINE_STAGES
    assert set(STAGE_FLOWS) == {n for n in ALL_STAGES if get_stage(n).gpu}
    # hooks: every stage that calls an LLM checks its endpoint first; the training stages launch
    assert all(get_stage(n).preflight is not None for n in ALL_STAGES if get_stage(n).llm)
    assert {n for n in ALL_STAGES if get_stage(n).launcher} == {
        "sft",
        "improver_sft",
        "ref_logps",
        "dpo",
        "orpo",
        "sapo",
    }
    assert all(get_stage(n).module == f"tasks.{n}" for n in ALL_STAGES)


def test_the_reference_log_probs_are_keyed_by_what_changes_them_only():
    """Another beta, learning rate or loss reuses them; another max_length does not."""
    cfg = load_config("tiny")
    st = get_stage("ref_logps")
    inputs = {"reference": _ref("reference", "h1"), "pairs": _ref("pairs", "h2")}
    base = st.cache_key(st.coerce(cfg.dpo), inputs)
    for override in ("dpo.beta=0.3", "dpo.learning_rate=1e-6", "dpo.loss_type=ipo", "dpo.seed=3"):
        assert st.cache_key(st.coerce(load_config("tiny", [override]).dpo), inputs) == base, (
            override
        )
    assert st.cache_key(st.coerce(load_config("tiny", ["dpo.max_length=64"]).dpo), inputs) != base
    # the SPIN and DPO-baseline sections project the same way
    assert st.cache_key(st.coerce(cfg.dpo_baseline), inputs) == st.cache_key(
        st.coerce(cfg.dpo_baseline.model_copy(update={"beta": 0.5})), inputs
    )


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown stage 'dop'"):
        get_stage("dop")


# ----------------------------------------------------------------------------------- cache keys
def _ref(name: str, h: str) -> ArtifactRef:
    return ArtifactRef(
        uri=f"file:///x/{name}", kind="table", stage=name, cache_key="k", content_hash=h
    )


def _sections() -> dict[str, BaseModel]:
    """A config section per stage: the tiny preset's, and the evaluation defaults (hub sources)."""
    cfg = load_config("tiny")
    ev = EvaluationConfig(pairwise=[PairwiseConfig(name="imp_vs_b", table="file:///x/annotate")])
    return {
        "prepare": cfg.data.po,
        "base_model": cfg.model,
        "sft": cfg.sft,
        "sample": cfg.sample,
        "annotate": cfg.annotate,
        "ppl_filter": cfg.ppl_filter,
        "improver_sft": cfg.improver_sft,
        "pairs": cfg.pairs,
        "dpo": cfg.dpo,
        "ref_logps": cfg.dpo,
        "judge": cfg.judge,
        "sapo": cfg.sapo,
        "orpo": cfg.orpo,
        "refine": cfg.pairs,
        "testbed_report": cfg.judge,
        "alpaca_eval_generate": ev.alpaca_eval,
        "alpaca_eval_judge": ev.alpaca_eval,
        "arena_hard_generate": ev.arena_hard,
        "arena_hard_judge": ev.arena_hard,
        "pairwise": ev.pairwise[0],
        "mt_bench_generate": ev.mt_bench,
        "mt_bench_judge": ev.mt_bench,
        "lm_eval": ev.lm_eval,
        "report": ReportConfig(),
    }


# Values that must name something that exists (a prompt file, a bundled file) to be valid at all.
PROMPT_ALTERNATIVES = [
    "refine_v1",
    "improver_v1",
    "judge_pairwise_v1",
    "annotate_improve_v1",
    "external_answer_v1",
    "alpaca_eval_clf_v1",
]
SPECIAL = {
    ("prepare", "path"): "bundled:tiny/improver.jsonl",
    ("sapo", "long_prompts"): "truncate",  # a Literal, not a prompt file
}
# Fields whose only other valid value would need a new file in the package: covered through the
# prompt/settings version in the key instead (flipping the file's text changes the key, tested below).
NOT_FLIPPABLE = {("arena_hard_judge", "judge_settings"), ("mt_bench_judge", "judge_prompts")}


def _leaves(
    model: BaseModel, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any, Any, bool]]:
    """(path, annotation, value, runtime) of every field, recursing into sub-sections."""
    out = []
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        runtime = bool(extra.get(NOT_IN_CACHE_KEY))
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out += [(p, a, v, runtime or r) for p, a, v, r in _leaves(value, prefix + (name,))]
        else:
            out.append((prefix + (name,), field.annotation, value, runtime))
    return out


def _candidates(stage: str, path: tuple[str, ...], annotation: Any, value: Any) -> list[Any]:
    if (stage, path[-1]) in SPECIAL:
        return [SPECIAL[(stage, path[-1])]]
    if "prompt" in path[-1] and isinstance(value, str):
        return [p for p in PROMPT_ALTERNATIVES if p != value]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return [c for c in typing.get_args(annotation) if c != value]
    if origin is list and args and typing.get_origin(args[0]) is Literal:
        choices = list(typing.get_args(args[0]))
        return (
            [[c for c in choices if c not in value] or choices[:1]]
            if len(value) > 1
            else [[c for c in choices if c not in value]]
        )
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, 0, 5]
    if isinstance(value, float):
        return [value * 0.5, value + 0.05, value * 2, 0.5]
    if isinstance(value, str):
        return [value + "x"]
    if isinstance(value, list):
        return [value + ["x"]]
    if isinstance(value, dict) and path[-1] == "trl":  # TRL's own argument names only
        return [{**value, "adam_beta2": 0.98}, {**value, "max_grad_norm": 0.5}]
    if isinstance(value, dict):
        return [{**value, "x": "y"}, {**value, "x": 0.5}]
    if value is None:
        return ["x", 256, 0.5, True]
    raise AssertionError(f"no candidate for {path} = {value!r}")


def _with(section: BaseModel, path: tuple[str, ...], value: Any) -> BaseModel:
    data = section.model_dump()
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return type(section).model_validate(data)


def _flipped(
    stage: str, section: BaseModel, path: tuple[str, ...], annotation: Any, value: Any
) -> BaseModel:
    for candidate in [c for c in _candidates(stage, path, annotation, value) if c != value]:
        try:
            return _with(section, path, candidate)
        except (ValueError, TypeError):
            continue
    raise AssertionError(f"{stage}: found no valid other value for {'.'.join(path)} = {value!r}")


@pytest.mark.parametrize("name", ALL_STAGES)
def test_cache_key_covers_every_config_field_and_no_runtime_field(name):
    st = get_stage(name)
    section = st.coerce(_sections()[name])
    inputs = {n: _ref(n, f"hash-{n}") for n in st.inputs}
    params = {p: "model-a" for p in st.params}
    base = st.cache_key(section, inputs, params)
    checked = 0
    for path, annotation, value, runtime in _leaves(section):
        if (name, path[-1]) in NOT_FLIPPABLE:
            continue
        other = st.cache_key(_flipped(name, section, path, annotation, value), inputs, params)
        dotted = f"{st.section}.{'.'.join(path)}"
        if runtime:
            assert other == base, f"{name}: runtime-only field {dotted} changed the cache key"
        else:
            assert other != base, f"{name}: changing {dotted} does not change the cache key"
            checked += 1
    assert checked >= 1
    # every input artifact and every plain-value parameter is part of the key too, except an input
    # derived from the others (dpo's ref_logps: whether they were computed beforehand)
    for n in st.inputs:
        other = st.cache_key(section, {**inputs, n: _ref(n, "other")}, params)
        if n in st.derived_inputs:
            assert other == base, f"{name}: derived input {n} changed the key"
        else:
            assert other != base, f"{name}: input {n}"
    for p in st.params:
        assert st.cache_key(section, inputs, {**params, p: "model-b"}) != base, f"{name}: param {p}"


def test_editing_a_prompt_file_changes_the_key(monkeypatch):
    """The prompt's version (its text's hash), not only its name, is in the key."""
    import sgpo.prompts as prompts

    st = get_stage("annotate")
    cfg = load_config("tiny").annotate
    inputs = {"samples": _ref("samples", "h")}
    before = st.cache_key(cfg, inputs)
    original = prompts.load_prompt(cfg.prompt)
    monkeypatch.setattr(
        prompts,
        "load_prompt",
        lambda name: (
            prompts.Prompt(name, original.text + " ")
            if name == cfg.prompt
            else original.__class__(name, (prompts.PROMPT_DIR / f"{name}.txt").read_text())
        ),
    )
    monkeypatch.setattr("tasks.annotate.load_prompt", prompts.load_prompt)
    assert st.cache_key(cfg, inputs) != before


def test_a_missing_input_or_an_unknown_parameter_is_a_clear_error(tmp_path):
    from sgpo.config import StoreConfig
    from sgpo.core import StageContext, run_stage

    st = get_stage("sft")
    with pytest.raises(ValueError, match=r"missing input artifact\(s\) \['data'\]"):
        st.cache_key(load_config("tiny").sft, {"base": _ref("base", "h")})
    ctx = StageContext(store=StoreConfig(url=str(tmp_path)))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lr'\]"):
        run_stage(
            st,
            load_config("tiny").sft,
            ctx,
            {"base": _ref("b", "1"), "data": _ref("d", "2")},
            {"lr": 1},
        )


def test_an_llm_stage_without_endpoint_says_which_key_to_set(tmp_path):
    from sgpo.config import StoreConfig
    from sgpo.core import StageContext, run_stage
    from sgpo.llm.client import ExternalLLMNotConfigured

    ctx = StageContext(store=StoreConfig(url=str(tmp_path)))
    with pytest.raises(ExternalLLMNotConfigured, match=r"annotate\.endpoint\.base_url is not set"):
        run_stage(
            get_stage("annotate"),
            load_config("tiny").annotate,
            ctx,
            {"samples": _ref("samples", "h")},
        )


def test_eval_stages_get_only_their_part_of_the_benchmark_section():
    """The generate stage's key does not move when a judge setting changes (no regeneration), and
    the judge's key does not move when a sampling setting changes (the answers are its input)."""
    ev = EvaluationConfig()
    gen, jud = get_stage("alpaca_eval_generate"), get_stage("alpaca_eval_judge")
    model, answers = {"model": _ref("model", "m")}, {"answers": _ref("answers", "a")}
    judge_change = ev.alpaca_eval.model_copy(update={"order_seed": 7})
    sampling_change = ev.alpaca_eval.model_copy(
        update={"sampling": ev.alpaca_eval.sampling.model_copy(update={"seed": 9})}
    )
    p = {"model_name": "m"}
    assert gen.cache_key(gen.coerce(judge_change), model, p) == gen.cache_key(
        gen.coerce(ev.alpaca_eval), model, p
    )
    assert jud.cache_key(jud.coerce(sampling_change), answers) == jud.cache_key(
        jud.coerce(ev.alpaca_eval), answers
    )
    assert set(EVALUATION_STAGES) <= set(ALL_STAGES) and set(PIPELINE_STAGES) <= set(ALL_STAGES)
