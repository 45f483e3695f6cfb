"""Unit tests of each stage's own logic, without Prefect or a model (on the tiny model and in fresh
interpreters: tests/integration/tasks/test_stage_logic.py)."""

from __future__ import annotations

import json

import pytest

from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec, ImproverSFTStageConfig, PairsStageConfig, load_config
from sgpo.core import StageContext, run_stage
from sgpo.data.sources import DatasetError
from sgpo.prompts import PromptError, load_prompt
from tasks import get_stage, pairs, ppl_filter, prepare
from tasks.improver_sft import improver_examples


# ----------------------------------------------------------------- IQR filter
def test_tukey_fences_hand_computed():
    # sorted: 1 2 3 4 5 6 7 8 ; numpy linear quartiles: Q1 = 2.75, Q3 = 6.25, IQR = 3.5
    f = ppl_filter.tukey_fences([8, 1, 7, 2, 6, 3, 5, 4], k=1.5)
    assert f["q1"] == pytest.approx(2.75) and f["q3"] == pytest.approx(6.25)
    assert f["low"] == pytest.approx(2.75 - 5.25) and f["high"] == pytest.approx(6.25 + 5.25)


def test_tukey_fences_flag_the_outlier():
    values = [10, 11, 12, 13, 14, 100]
    f = ppl_filter.tukey_fences(values)
    kept = [v for v in values if f["low"] <= v <= f["high"]]
    assert kept == [10, 11, 12, 13, 14]


def test_tukey_fences_empty_raises():
    with pytest.raises(ValueError):
        ppl_filter.tukey_fences([])


# ----------------------------------------------------------------- prompts
def test_prompt_rendering_and_versions():
    p = load_prompt("refine_v1")
    text = p.render(instruction="Do {x}", response="y {}", reference="ref")
    assert "Do {x}" in text and "y {}" in text and "ref" in text  # braces in values survive
    assert p.version.startswith("refine_v1@") and len(p.version.split("@")[1]) == 12
    with pytest.raises(PromptError, match="missing"):
        p.render(instruction="x", response="y")
    with pytest.raises(PromptError, match="unexpected"):
        load_prompt("improver_v1").render(instruction="x", response="y", reference="z")
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("nope")


def test_improver_prompt_has_no_reference_and_refine_prompt_has_it():
    assert "reference" not in load_prompt("improver_v1").fields
    assert {"instruction", "response", "reference"} == load_prompt("refine_v1").fields
    assert {"instruction", "response_a", "response_b"} == load_prompt("annotate_improve_v1").fields


# ----------------------------------------------------------------- pairs
ROWS = [
    {"prompt_id": "p0", "prompt": "x0", "reference": "sft0"},
    {"prompt_id": "p1", "prompt": "x1", "reference": "sft1"},
]


def test_pairs_refined_chosen_policy_rejected():
    out = pairs.build_pairs(
        ROWS, [["y0"], ["y1a", "y1b"]], ["y0+", "y1a+", "y1b+"], PairsStageConfig()
    )
    assert [(p["chosen"], p["rejected"]) for p in out] == [
        ("y0+", "y0"),
        ("y1a+", "y1a"),
        ("y1b+", "y1b"),
    ]
    assert [p["sample_index"] for p in out] == [0, 0, 1]


def test_pairs_diamond_uses_sft_reference():
    out = pairs.build_pairs(ROWS, [["y0"], ["y1"]], None, PairsStageConfig(chosen="sft"))
    assert [(p["chosen"], p["rejected"]) for p in out] == [("sft0", "y0"), ("sft1", "y1")]


def test_refine_messages_with_and_without_reference():
    with_ref = pairs.refine_messages(PairsStageConfig(), "inst", "resp", "REFERENCE-TEXT")[0][
        "content"
    ]
    no_ref = pairs.refine_messages(
        PairsStageConfig(refine_with_reference=False), "inst", "resp", "REFERENCE-TEXT"
    )[0]["content"]
    assert "REFERENCE-TEXT" in with_ref and "REFERENCE-TEXT" not in no_ref and "resp" in no_ref


def test_improver_examples_follow_targets_and_filter():
    rows = [
        {
            "prompt": "x",
            "policy": "b",
            "reference": "a",
            "target": "imp!",
            "target_type": "imp",
            "kept": True,
        },
        {
            "prompt": "x",
            "policy": "b",
            "reference": "a",
            "target": "ext!",
            "target_type": "ext",
            "kept": True,
        },
        {
            "prompt": "x",
            "policy": "b",
            "reference": "a",
            "target": "out!",
            "target_type": "imp",
            "kept": False,
        },
    ]
    both = improver_examples(rows, ImproverSFTStageConfig())
    assert [t for _, t in both] == ["imp!", "ext!"]
    assert "b" in both[0][0][0]["content"] and "[Reference" not in both[0][0][0]["content"]
    ext_only = improver_examples(rows, ImproverSFTStageConfig(targets=["ext"]))
    assert [t for _, t in ext_only] == ["ext!"]
    all_ref = improver_examples(rows, ImproverSFTStageConfig(with_reference=True))
    assert "a" in all_ref[0][0][0]["content"].split("[Reference answer]")[1]


# ----------------------------------------------------------------- data loading
def _spec(path, **kw):
    return DatasetSpec(path=str(path), **kw)


def test_normalizes_chat_preference_and_flat_formats(tmp_path):
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows, dropped = prepare.normalize_rows([{"messages": chat}], ["messages"], _spec("x.jsonl"))
    assert (
        rows
        == [
            {
                "prompt_id": "0",
                "prompt": "q",
                "messages": '[{"role": "user", "content": "q"}]',
                "reference": "a",
            }
        ]
        and dropped == 0
    )
    rows, _ = prepare.normalize_rows(
        [{"chosen": chat, "rejected": chat}], ["chosen", "rejected"], _spec("x.jsonl")
    )
    assert rows[0]["reference"] == "a"
    rows, _ = prepare.normalize_rows(
        [{"instruction": "q", "output": "a"}], ["instruction", "output"], _spec("x.jsonl")
    )
    assert rows[0]["prompt"] == "q"
    rows, dropped = prepare.normalize_rows(
        [{"instruction": "q", "output": ""}], ["instruction", "output"], _spec("x.jsonl")
    )
    assert rows == [] and dropped == 1


def test_wrong_column_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no column 'text'.*columns: \\['q', 'a'\\]"):
        prepare.normalize_rows(
            [{"q": 1, "a": 2}], ["q", "a"], _spec("x.jsonl", prompt_column="text")
        )
    with pytest.raises(DatasetError, match="cannot find the prompt and response columns"):
        prepare.normalize_rows([{"q": 1, "a": 2}], ["q", "a"], _spec("x.jsonl"))


def test_empty_and_missing_datasets_fail_clearly(tmp_path):
    from sgpo.config import StoreConfig

    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))

    def run_prepare(cfg, ctx, inputs):
        return run_stage(get_stage("prepare"), cfg, ctx, inputs)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError):
        run_prepare(_spec(empty), ctx, {})
    with pytest.raises(DatasetError, match="does not exist"):
        run_prepare(_spec(tmp_path / "missing.jsonl"), ctx, {})
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "q", "response": " "}) + "\n")
    with pytest.raises(DatasetError, match="none of its 1 rows"):
        run_prepare(_spec(blank), ctx, {})
    assert not list((tmp_path / "store").rglob("manifest.json"))  # nothing looks finished


def test_bundled_data_loads_through_load_dataset(tmp_path):
    from sgpo.config import StoreConfig

    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    cfg = load_config("tiny")
    ref = run_stage(get_stage("prepare"), cfg.data.improver, ctx, {})
    assert ref.rows == cfg.data.improver.max_rows
    table = ctx.open_store().read_table(ref)
    assert table.column_names == ["prompt_id", "prompt", "messages", "reference"]


# ----------------------------------------------------------------- cache keys


def test_cache_key_changes_with_config_inputs_and_prompt():
    sft, annotate = get_stage("sft"), get_stage("annotate")
    cfg = load_config("tiny")
    a = ArtifactRef(uri="u", kind="model", stage="b", cache_key="c", content_hash="h1")
    d = ArtifactRef(uri="u", kind="table", stage="p", cache_key="c", content_hash="h2")
    d2 = d.model_copy(update={"content_hash": "h3"})
    base = sft.cache_key(cfg.sft, {"base": a, "data": d})
    assert sft.cache_key(cfg.sft, {"base": a, "data": d2}) != base
    assert (
        sft.cache_key(cfg.sft.model_copy(update={"learning_rate": 1e-4}), {"base": a, "data": d})
        != base
    )
    assert (
        sft.cache_key(
            cfg.sft.model_copy(update={"per_device_batch_size": 2}), {"base": a, "data": d}
        )
        == base
    )  # runtime only
    assert annotate.cache_key(cfg.annotate, {"samples": d}) != annotate.cache_key(
        cfg.annotate.model_copy(update={"prompt": "refine_v1"}), {"samples": d}
    )


# ----------------------------------------------------------------- tiny kit


def test_tiny_base_model_key_follows_the_kit_source(tmp_path, monkeypatch):
    """Changing how the kit builds the model or tokenizer must not be served from an old cache entry."""
    import hashlib

    import sgpo.models.tinykit
    from sgpo.config import ModelSpec, cache_payload

    base_model = get_stage("base_model")
    spec = ModelSpec()
    hub = ModelSpec(name_or_path="Qwen/Qwen2.5-7B")
    before, hub_before = base_model.cache_key(spec, {}), base_model.cache_key(hub, {})
    source = open(sgpo.models.tinykit.__file__).read()
    edited = tmp_path / "tinykit.py"
    monkeypatch.setattr(sgpo.models.tinykit, "__file__", str(edited))
    # a comment, a docstring or the layout of the code builds the same model: same key
    edited.write_text(
        source.replace('"""The tiny kit:', '"""(edited) The tiny kit:', 1) + "\n# a comment\n\n\n"
    )
    assert base_model.cache_key(spec, {}) == before
    # a change to the code does not
    edited.write_text(source.replace('EOS_TOKEN = "<|im_end|>"', 'EOS_TOKEN = "<|endoftext|>"', 1))
    assert base_model.cache_key(spec, {}) != before
    # a hub model is not built by the kit: its key has no kit source in it, before or after the edit.
    # Expected value written out from the key's definition: sha256 of the canonical JSON of stage,
    # code version, config (no runtime fields), no inputs, no prompts.
    payload = {
        "stage": "base_model",
        "code_version": base_model.code_version,
        "config": cache_payload(hub),
        "inputs": {},
        "prompts": {},
    }
    expected_hub = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert base_model.cache_key(hub, {}) == hub_before == expected_hub
