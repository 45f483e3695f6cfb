"""Every field left out of a cache key is proven runtime (issue 22, item 3).

A runtime field is left out of the key because it changes how a stage runs, not what it makes; if it
changed what it makes, whichever run finished first would be served to the other. So each one is
run here twice on the tiny model with two values (or points to the test elsewhere that does), and
the content must be equal: byte for byte where the computation allows it, else within a stated
tolerance for training numerics.

Tolerance of training numerics (`REL_TOL`): the weight change between the two runs, as a share of
the update itself (relative L2: |w_a - w_b| / |w_a - w_start|), at most 1e-3. Why not equal: another
micro-batch size, another padding of the reference's batch, another accumulation order round the
last bits differently, and Adam divides each weight's step by its gradient's own size, so a last-bit
difference in a gradient that nearly cancels moves that weight visibly (a max-abs difference of a
few % of the update on a handful of weights). Measured on this CPU: 7e-6 to 4e-5. A change of what
is trained moves every weight by the order of the update: the controls below (learning rate x1.1)
give about 1e-1, so the check can fail.

Fields that failed the proof were moved into the key (commit "Runtime fields proven runtime"):
TrainConfig.bf16, RefLogpsConfig.bf16 (when set), SamplingConfig.backend and vllm_dtype, SAPO's
generation_batch_size and micro_batch_size, lm_eval's backend and batch_size; sampling.batch_size
became truly runtime (the transformers back-end seeds each sample, as the vLLM and OpenAI ones do).
"""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import BaseModel

import tasks
from sgpo.config import StoreConfig, load_config
from sgpo.config.sections import NOT_IN_CACHE_KEY
from sgpo.core import StageContext, run_stage
from tasks import get_stage

REPO = Path(__file__).resolve().parents[2]
REL_TOL = 1e-3

SAMPLING_SERVER_ONLY = (
    "base_url",
    "served_model_name",
    "max_concurrency",
    "vllm_python",
    "vllm_max_model_len",
    "vllm_enforce_eager",
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "vllm_data_parallel_size",
    "vllm_extra_args",
    "vllm_env",
    "server_startup_timeout_s",
)
ENDPOINT = "test_llm_endpoint_settings_and_thresholds_change_no_annotation"
SCALE = "tests/integration/train/test_scale.py::"
NEEDS_VLLM = (
    "needs vLLM (not on this machine): with the transformers back-end it is ignored "
    f"({'test_sampling_batch_size_and_server_settings_change_no_sample'}); for vllm / vllm_server it "
    "sets where and how the same engine runs (tests/integration/generate/test_generation_contract.py -m vllm: one "
    "seeding rule whatever the batch)"
)
# "Class.field" of every runtime field (the class that holds it, as found in a stage's section) ->
# the test proving it runtime (this file's, or FILE::TEST elsewhere), or why no test here
PROOFS: dict[str, str] = {
    "SamplingConfig.batch_size": "test_sampling_batch_size_and_server_settings_change_no_sample",
    **{f"SamplingConfig.{f}": NEEDS_VLLM for f in SAMPLING_SERVER_ONLY},
    "PplFilterStageConfig.batch_size": "test_ppl_filter_batch_size_changes_no_decision",
    **{
        f"{c}.{f}": "test_sft_runtime_fields"
        for c in ("SFTStageConfig", "ImproverSFTStageConfig")  # the same train_sft
        for f in ("per_device_batch_size", "gradient_checkpointing", "logging_steps")
    },
    **{
        f"DPOStageConfig.{f}": "test_dpo_runtime_fields"
        for f in (
            "per_device_batch_size",
            "gradient_checkpointing",
            "logging_steps",
            "reference_logps",
            "reference_batch_size",
        )
    },
    "RefLogpsConfig.reference_batch_size": "test_ref_logps_batch_size_changes_only_rounding",
    "SFTStageConfig.launch": SCALE + "test_sft_with_two_processes_equals_one_process",
    "ImproverSFTStageConfig.launch": SCALE + "test_sft_with_two_processes_equals_one_process",
    "DPOStageConfig.launch": SCALE
    + "test_dpo_two_processes_cached_reference_equals_one_process_live_reference",
    "RefLogpsConfig.launch": SCALE
    + "test_dpo_two_processes_cached_reference_equals_one_process_live_reference",
    **{
        f"EndpointConfig.{f}": ENDPOINT
        for f in (
            "base_url",
            "api_key_env",
            "timeout_s",
            "max_concurrency",
            "max_retries",
            "backoff_base_s",
            "backoff_max_s",
            "price_per_1m_prompt_tokens",
            "price_per_1m_completion_tokens",
            "mode",
            "batch_poll_s",
            "batch_poll_max_s",
            "batch_max_requests",
            "batch_discount",
        )
    },
    "AnnotateStageConfig.min_usable_fraction": ENDPOINT,
    **{
        f"{c}.max_unlabelled_fraction": "tests/integration/test_judge_reports_what_it_cannot_read.py::"
        "test_an_unreadable_share_above_the_default_fails_and_below_it_is_reported"
        for c in (
            "PairJudgeConfig",
            "JudgeStageConfig",
            "PairwiseConfig",
            "AlpacaEvalJudgeConfig",
            "ArenaHardJudgeConfig",
        )
    },
    "PairwiseConfig.table": "by construction: the table is the stage's input artifact, whose "
    "content hash is in the key; this is only where a flow finds it",
    **{
        f"{c}.max_empty_fraction": f"tests/integration/tasks/test_empty_answers.py::test_{t}"
        for c, t in (
            ("SampleStageConfig", "sample_fails_when_most_answers_are_empty"),
            ("PairsStageConfig", "pairs_with_an_empty_chosen_or_rejected_answer_never_reach_dpo"),
        )
    },
    "ReportConfig.seconds": "tests/integration/test_report_seconds.py::"
    "test_stage_table_has_this_runs_seconds_and_they_are_not_in_the_key",
    **{
        f"ORPOStageConfig.{f}": "test_orpo_runtime_fields"
        for f in ("gradient_checkpointing", "logging_steps")
    },
    "ORPOStageConfig.launch": "by construction: the launcher of the DPO stage (sgpo.train.launch), "
    "whose processes equal one process by test_dpo_two_processes_cached_reference_equals_one_process_"
    "live_reference in tests/integration/train/test_scale.py; no two-process ORPO run here",
    "SAPOConfig.launch": "tests/integration/test_sapo_processes.py::"
    "test_two_processes_end_where_one_process_holding_both_buffers_ends",
    **{
        f"SAPOConfig.{f}": "test_sapo_checkpoints_and_logging_change_no_training"
        for f in ("checkpoint_every", "keep_checkpoints", "logging_steps")
    },
}


def _runtime_fields(model: type[BaseModel], out: set[str]) -> set[str]:
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get(NOT_IN_CACHE_KEY):
            out.add(f"{model.__name__}.{name}")
            continue
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _runtime_fields(arg, out)
    return out


def test_every_runtime_field_of_every_stage_has_its_proof():
    found: set[str] = set()
    for name in tasks.ALL_STAGES:
        _runtime_fields(get_stage(name).config, found)
    assert sorted(found - set(PROOFS)) == [], "a runtime field without a proof: add one"
    assert sorted(set(PROOFS) - found) == [], "a proof for a field that is no longer runtime"
    here = Path(__file__).read_text()
    for proof in set(PROOFS.values()):
        if proof.startswith("test_"):
            assert f"def {proof}(" in here, proof
        elif "::" in proof:
            path, test = proof.split("::")
            assert f"def {test}(" in (REPO / path).read_text(), proof


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("runtime") / "store"
    ctx = StageContext(store=StoreConfig(url=str(store_dir)), run_id="test")
    cfg = load_config("tiny", ["tracking.enabled=false"])
    base = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    data = {
        r: run_stage(get_stage("prepare"), getattr(cfg.data, r), ctx, {}) for r in ("sft", "po")
    }
    store = ctx.open_store()
    rows = store.read_table(data["sft"]).to_pylist()[:16]
    pairs = store.publish_table(  # not under pairs/: the pairs stage's runs below clear that folder
        "test_pairs",
        "runtime-test-pairs",
        pa.Table.from_pylist(
            [
                {
                    "prompt": r["prompt"],
                    "chosen": r["reference"],
                    "rejected": r["reference"][::-1][:80],
                }
                for r in rows
            ]
        ),
        manifest={},
    )
    return store_dir, ctx, store, base, data, pairs


def _again(world, stage: str, cfg, inputs):
    """Run `stage` afresh (its earlier artifact removed): the key is the same, the work is redone."""
    store_dir, ctx = world[0], world[1]
    shutil.rmtree(store_dir / stage, ignore_errors=True)
    return run_stage(get_stage(stage), cfg, ctx, inputs)


def _weights(store, ref) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(store.model_dir(ref)) / "model.safetensors"))


def _relative_change(a: dict, b: dict, start: dict) -> float:
    """|a - b| / |a - start| over every weight (L2)."""
    import torch

    diff = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    update = sum(float(((a[k].double() - start[k].double()) ** 2).sum()) for k in a)
    return (diff / update) ** 0.5 if update else float(torch.inf)


def _same_key(stage: str, a, b, inputs) -> None:
    st = get_stage(stage)
    assert st.cache_key(st.coerce(a), inputs) == st.cache_key(st.coerce(b), inputs)


# ------------------------------------------------------------------------------------------ generation
def test_sampling_batch_size_and_server_settings_change_no_sample(world):
    _, _, _, base, data, _ = world
    inputs = {"policy": base, "data": data["po"]}
    plain = load_config("tiny").sample
    other = load_config(
        "tiny",
        [
            "sample.sampling.batch_size=3",
            # ignored by the transformers back-end (they place a server or a vLLM engine)
            "sample.sampling.max_concurrency=1",
            "sample.sampling.served_model_name=x",
            "sample.sampling.vllm_python=/nowhere/python",
            "sample.sampling.vllm_max_model_len=64",
            "sample.sampling.vllm_enforce_eager=true",
            "sample.sampling.vllm_gpu_memory_utilization=0.5",
            "sample.sampling.vllm_tensor_parallel_size=2",
            "sample.sampling.vllm_data_parallel_size=2",
            "sample.sampling.vllm_extra_args=[--x]",
            "sample.sampling.vllm_env={A: b}",
            "sample.sampling.server_startup_timeout_s=5",
        ],
    ).sample
    _same_key("sample", plain, other, inputs)
    a = _again(world, "sample", plain, inputs)
    b = _again(world, "sample", other, inputs)
    assert a.content_hash == b.content_hash  # 16 answers, byte for byte
    # control: another seed is another sample (the comparison can fail)
    seeded = load_config("tiny", ["sample.sampling.seed=1"]).sample
    assert _again(world, "sample", seeded, inputs).content_hash != a.content_hash

    # pairs: the policy's answers and their refinements, batched 16 then 3
    pairs_in = {"policy": base, "data": data["po"], "improver": base}
    p16 = load_config("tiny").pairs
    p3 = load_config("tiny", ["pairs.sampling.batch_size=3"]).pairs
    _same_key("pairs", p16, p3, pairs_in)
    assert (
        _again(world, "pairs", p16, pairs_in).content_hash
        == _again(world, "pairs", p3, pairs_in).content_hash
    )


def test_ppl_filter_batch_size_changes_no_decision(world):
    """Perplexities in batches of 8 or 1 (another padding) round their last bits differently:
    equal within 1e-5 relative, and every keep/drop decision the same."""
    _, _, store, base, data, _ = world
    rows = store.read_table(data["po"]).to_pylist()
    annotations = store.publish_table(
        "annotate",
        "runtime-test-annotations",
        pa.Table.from_pylist(
            [
                {
                    **r,
                    "policy": r["reference"][::-1],
                    "imp": r["reference"][: 20 + 7 * (i % 5)],
                    "ext": r["reference"] + " Indeed." * (i % 3),
                }
                for i, r in enumerate(rows)
            ]
        ),
        manifest={},
    )
    inputs = {"policy": base, "annotations": annotations}
    eight = load_config("tiny", ["ppl_filter.batch_size=8"]).ppl_filter
    one = load_config("tiny", ["ppl_filter.batch_size=1"]).ppl_filter
    _same_key("ppl_filter", eight, one, inputs)
    a = store.read_table(_again(world, "ppl_filter", eight, inputs)).to_pylist()
    b = store.read_table(_again(world, "ppl_filter", one, inputs)).to_pylist()
    assert [r["kept"] for r in a] == [r["kept"] for r in b]
    assert all(abs(x["ppl"] - y["ppl"]) <= 1e-5 * x["ppl"] for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------ training
SFT = ["tracking.enabled=false", "sft.max_steps=2"]


def test_sft_runtime_fields(world):
    _, _, store, base, data, _ = world
    inputs = {"base": base, "data": data["sft"]}

    def train(*extra: str, runtime: bool = True) -> dict:
        cfg = load_config("tiny", [*SFT, *extra]).sft
        if runtime:
            _same_key("sft", load_config("tiny", SFT).sft, cfg, inputs)
        return _weights(store, _again(world, "sft", cfg, inputs))

    start, plain = _weights(store, base), train()
    equal = train("sft.gradient_checkpointing=true", "sft.logging_steps=5")
    assert _relative_change(plain, equal, start) == 0.0
    for extra in ("sft.per_device_batch_size=4", "sft.per_device_batch_size=2"):
        assert _relative_change(plain, train(extra), start) <= REL_TOL, extra
    control = train("sft.learning_rate=1.1e-3", runtime=False)
    assert _relative_change(plain, control, start) > 10 * REL_TOL


DPO = ["tracking.enabled=false"]


@pytest.mark.slow  # 26 s of DPO runs; DPO's key coverage: tests/unit/core/test_stage_decl.py
def test_dpo_runtime_fields(world):
    """Cached vs live reference: the cause of their difference is the padding of the reference's
    forward pass (the ref_logps stage pads length-sorted batches of reference_batch_size, training
    pads its micro-batches): a pair's log-prob changes in its last float32 bit with the batch it was
    padded in (reference_batch_size 1 vs 8 shows it alone), and Adam amplifies that where a
    gradient nearly cancels. Not truncation (the same collator and max_length), dtype (both
    float32) or dropout (disabled by TRL)."""
    _, ctx, store, base, _, pairs = world

    def train(*extra: str, runtime: bool = True) -> dict:
        cfg = load_config("tiny", [*DPO, *extra]).dpo
        inputs = {"start": base, "pairs": pairs}
        if runtime:
            _same_key("dpo", load_config("tiny", DPO).dpo, cfg, inputs)
        if cfg.reference_logps == "cached":
            shutil.rmtree(world[0] / "ref_logps", ignore_errors=True)
            inputs["ref_logps"] = run_stage(
                get_stage("ref_logps"), cfg, ctx, {"reference": base, "pairs": pairs}
            )
        return _weights(store, _again(world, "dpo", cfg, inputs))

    start, plain = _weights(store, base), train()
    equal = train("dpo.gradient_checkpointing=true", "dpo.logging_steps=5")
    assert _relative_change(plain, equal, start) == 0.0
    for extra in (
        ["dpo.per_device_batch_size=2"],
        ["dpo.reference_logps=live"],
        ["dpo.reference_logps=live", "dpo.per_device_batch_size=2"],
        ["dpo.reference_batch_size=1"],
    ):
        assert _relative_change(plain, train(*extra), start) <= REL_TOL, extra
    control = train("dpo.learning_rate=1.1e-4", runtime=False)
    assert _relative_change(plain, control, start) > 10 * REL_TOL


@pytest.mark.slow  # 11 s; as test_dpo_runtime_fields
def test_orpo_runtime_fields(world):
    _, _, store, base, _, pairs = world
    inputs = {"start": base, "pairs": pairs}
    recipe = ["method=orpo", *DPO]

    def train(*extra: str, runtime: bool = True) -> dict:
        cfg = load_config("tiny", [*recipe, *extra]).orpo
        if runtime:
            _same_key("orpo", load_config("tiny", recipe).orpo, cfg, inputs)
        return _weights(store, _again(world, "orpo", cfg, inputs))

    start, plain = _weights(store, base), train()
    equal = train("orpo.gradient_checkpointing=true", "orpo.logging_steps=5")
    assert _relative_change(plain, equal, start) == 0.0
    # not runtime for ORPO (TRL's ORPOTrainer averages per micro-batch): in its key
    smaller = load_config("tiny", [*recipe, "orpo.per_device_batch_size=2"]).orpo
    st = get_stage("orpo")
    assert st.cache_key(smaller, inputs) != st.cache_key(load_config("tiny", recipe).orpo, inputs)
    assert (
        _relative_change(plain, train("orpo.per_device_batch_size=2", runtime=False), start)
        > REL_TOL
    )
    control = train(
        f"orpo.learning_rate={load_config('tiny', recipe).orpo.learning_rate * 1.1}", runtime=False
    )
    assert _relative_change(plain, control, start) > 10 * REL_TOL


def test_ref_logps_batch_size_changes_only_rounding(world):
    _, _, store, base, _, pairs = world
    inputs = {"reference": base, "pairs": pairs}
    eight = load_config("tiny", ["dpo.reference_batch_size=8"]).dpo
    one = load_config("tiny", ["dpo.reference_batch_size=1"]).dpo
    _same_key("ref_logps", eight, one, inputs)
    a = store.read_table(_again(world, "ref_logps", eight, inputs)).to_pylist()
    b = store.read_table(_again(world, "ref_logps", one, inputs)).to_pylist()
    for x, y in zip(a, b):
        assert (x["pair_hash"], x["chosen_tokens"]) == (y["pair_hash"], y["chosen_tokens"])
        for col in ("ref_chosen_logps", "ref_rejected_logps"):  # float32 sums: last bits only
            assert abs(x[col] - y[col]) <= 1e-5 * abs(x[col]), col


def test_sapo_checkpoints_and_logging_change_no_training(world):
    from safetensors.torch import load_file

    store_dir, ctx, store, base, _, _ = world
    cfg = load_config("tiny", ["method=sapo-dpo", "tracking.enabled=false"])
    data = run_stage(get_stage("prepare"), cfg.data.sapo, ctx, {})
    inputs = {"policy": base, "data": data}
    other = load_config(
        "tiny",
        [
            "method=sapo-dpo",
            "sapo.checkpoint_every=1",
            "sapo.keep_checkpoints=3",
            "sapo.logging_steps=3",
        ],
    ).sapo
    _same_key("sapo", cfg.sapo, other, inputs)
    a, b = (_again(world, "sapo", c, inputs) for c in (cfg.sapo, other))
    wa, wb = (load_file(str(Path(store.model_dir(r)) / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


# ------------------------------------------------------------------------------------------ paid calls
def test_llm_endpoint_settings_and_thresholds_change_no_annotation(tmp_path):
    """The same annotation through two servers (base_url), with every endpoint setting changed: sync
    or the Batch API, concurrency, timeouts, retries, backoff, prices, the key's variable, the
    acceptance threshold. Each in a store of its own, so the second pays for its own answers."""
    import hashlib
    import json

    from sgpo.config import AnnotateStageConfig, EndpointConfig
    from sgpo.llm.server import ChatResult, build_app, running_server

    class Deterministic:
        def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
            digest = hashlib.sha256(json.dumps([messages, seed]).encode()).hexdigest()
            return ChatResult(" ".join(digest[i : i + 5] for i in range(0, 30, 5)), "stop", 9, 7)

    n = 12
    rows = {
        "prompt_id": [f"p{i}" for i in range(n)],
        "prompt": [f"What is {i} + {i}?" for i in range(n)],
        "reference": [f"It is {2 * i}." for i in range(n)],
        "policy": [f"Maybe {2 * i + 1}." for i in range(n)],
        "sample_index": [0] * n,
        "policy_finish_reason": ["stop"] * n,
    }
    refs = []
    with (
        running_server(build_app(Deterministic(), model_name="ext")) as url_a,
        running_server(build_app(Deterministic(), model_name="ext")) as url_b,
    ):
        settings = [
            {"base_url": url_a},
            {
                "base_url": url_b,
                "api_key_env": "SGPO_TEST_OTHER_KEY",
                "timeout_s": 30,
                "max_concurrency": 1,
                "max_retries": 2,
                "backoff_base_s": 0.01,
                "backoff_max_s": 0.02,
                "price_per_1m_prompt_tokens": 1.0,
                "price_per_1m_completion_tokens": 2.0,
                "mode": "batch",
                "batch_poll_s": 0.05,
                "batch_poll_max_s": 0.1,
                "batch_max_requests": 5,
                "batch_discount": 0.25,
            },
        ]
        cfgs = [
            AnnotateStageConfig(
                endpoint=EndpointConfig(model="ext", **ep),
                min_usable_fraction=usable,
                max_tokens=64,
            )
            for ep, usable in zip(settings, (0.5, 0.0))
        ]
        for i, cfg in enumerate(cfgs):
            ctx = StageContext(store=StoreConfig(url=str(tmp_path / f"store{i}")), run_id="r")
            samples = ctx.open_store().publish_table(
                "sample", "s" * 64, pa.table(rows), manifest={}
            )
            refs.append(run_stage(get_stage("annotate"), cfg, ctx, {"samples": samples}))
    _same_key("annotate", cfgs[0], cfgs[1], {"samples": samples})
    a, b = refs
    assert a.summary["sent"] == b.summary["sent"] == 2 * n  # each paid for its own answers
    assert a.content_hash == b.content_hash
