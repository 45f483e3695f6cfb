"""Each pipeline stage function on small hand-made inputs (tiny model, no Prefect): what it publishes.

prepare / base_model / sft / judge / annotate / the evaluation stages have their own tests
(test_stage_logic, test_stage_run, test_annotate_kill, test_eval_stages); these cover sample,
ppl_filter, improver_sft, pairs and dpo as stages: rows, columns, counts and lineage."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from artifacts.store import ArtifactStore, local_model_ref
from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

PROMPTS = [
    {
        "prompt_id": f"p{i}",
        "prompt": f"Write one word about topic {i}.",
        "reference": f"Reference answer {i}.",
    }
    for i in range(3)
]


@pytest.fixture
def env(tmp_path, tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    store = ArtifactStore(str(tmp_path / "store"))
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="unit")
    return store, ctx, local_model_ref(tiny_model_dir)


def _table(store, name: str, rows: list[dict]):
    return store.publish_table(
        "prepare", name.ljust(64, "0"), pa.Table.from_pylist(rows), manifest={}
    )


def test_sample_stage_gives_n_samples_per_prompt_in_order(env):
    store, ctx, model = env
    data = _table(store, "a", PROMPTS)
    cfg = load_config("tiny", ["sample.sampling.n=2", "sample.sampling.max_new_tokens=6"]).sample
    ref = run_stage(get_stage("sample"), cfg, ctx, {"policy": model, "data": data})
    rows = store.read_table(ref).to_pylist()
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [
        (f"p{i}", k) for i in range(3) for k in range(2)
    ]
    assert all(r["reference"] == f"Reference answer {r['prompt_id'][1:]}." for r in rows)
    assert {r["policy_finish_reason"] for r in rows} <= {"stop", "length"}
    assert ref.summary["samples"] == 6
    parents = store.read_manifest(ref)["parents"]
    assert (
        parents["policy"]["content_hash"] == model.content_hash
        and parents["data"]["uri"] == data.uri
    )


def test_ppl_filter_stage_keeps_what_lies_inside_the_fences(env):
    store, ctx, model = env
    rows = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Say something {i}.",
            "reference": "ref",
            "policy": "pol",
            "imp": f"A short improved answer {i}.",
            "ext": f"An external answer number {i}." if i != 4 else None,
        }
        for i in range(8)
    ]
    rows[7]["imp"] = "zq" * 200  # far less likely under the model than the others: an outlier
    ann = _table(store, "b", rows)
    ref = run_stage(
        get_stage("ppl_filter"),
        load_config("tiny").ppl_filter,
        ctx,
        {"policy": model, "annotations": ann},
    )
    out = store.read_table(ref).to_pylist()
    assert len(out) == 8 + 7 and {r["target_type"] for r in out} == {
        "imp",
        "ext",
    }  # the null ext is not a candidate
    for t in ("imp", "ext"):
        ppl = [r["ppl"] for r in out if r["target_type"] == t]
        q1, q3 = np.percentile(ppl, [25, 75])
        low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        assert [r["kept"] for r in out if r["target_type"] == t] == [low <= p <= high for p in ppl]
        assert ref.summary[t]["kept"] == sum(low <= p <= high for p in ppl)
        assert math.isclose(ref.summary[t]["high"], high)
    outlier = next(r for r in out if r["target_type"] == "imp" and r["prompt_id"] == "p7")
    assert not outlier["kept"]


def test_improver_sft_stage_trains_on_the_kept_targets_of_the_chosen_types(env):
    store, ctx, model = env
    rows = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"q{i}",
            "reference": "ref",
            "policy": f"answer {i}",
            "target": f"better {i}",
            "target_type": "imp" if i % 2 else "ext",
            "ppl": 1.0,
            "kept": i != 3,
        }
        for i in range(8)
    ]
    filtered = _table(store, "c", rows)
    cfg = load_config(
        "tiny", ["improver_sft.max_steps=1", "improver_sft.targets=[imp]"]
    ).improver_sft
    ref = run_stage(get_stage("improver_sft"), cfg, ctx, {"start": model, "filtered": filtered})
    assert ref.kind == "model" and ref.summary["examples"] == 3  # imp rows 1, 5, 7 (3 is dropped)
    manifest = store.read_manifest(ref)
    assert any(f.endswith(".safetensors") for f in manifest["files"])
    assert manifest["prompts"]["improver"].startswith("improver_v1@")


@pytest.mark.parametrize("chosen", ["refined", "sft"])
def test_pairs_stage_chosen_and_rejected(env, chosen):
    store, ctx, model = env
    data = _table(store, "d", PROMPTS)
    cfg = load_config("tiny", [f"pairs.chosen={chosen}", "pairs.sampling.max_new_tokens=6"]).pairs
    ref = run_stage(
        get_stage("pairs"), cfg, ctx, {"policy": model, "improver": model, "data": data}
    )
    rows = store.read_table(ref).to_pylist()
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2"]
    if chosen == "sft":
        assert all(r["chosen"] == r["reference"] for r in rows)
        assert store.read_manifest(ref)["prompts"] == {}  # no refine prompt is used
    else:
        assert store.read_manifest(ref)["prompts"]["refine"].startswith("refine_v1@")
    assert ref.summary["pairs"] == 3


def test_dpo_stage_skips_pairs_without_a_preference(env):
    store, ctx, model = env
    pairs = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"q{i}",
            "reference": "r",
            "sample_index": 0,
            "chosen": f"good answer {i}",
            "rejected": f"bad answer {i}" if i else "good answer 0",
        }
        for i in range(5)
    ]
    table = _table(store, "e", pairs)
    cfg = load_config(
        "tiny", ["dpo.max_steps=1", "dpo.per_device_batch_size=2", "dpo.effective_batch_size=2"]
    ).dpo
    ref = run_stage(get_stage("dpo"), cfg, ctx, {"start": model, "pairs": table})
    assert ref.kind == "model" and ref.summary["pairs"] == 4  # the identical pair carries no signal
    manifest = store.read_manifest(ref)
    assert manifest["reference_model"] == model.uri and manifest["config"]["beta"] == cfg.beta
