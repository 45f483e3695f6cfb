"""A TRL argument passed through `<section>.trl` reaches TRL's trainer, and the manifest records the
section exactly as the stage used it (issue 22, item 7)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

DPO = ["tracking.enabled=false", "dpo.reference_logps=live", "dpo.max_steps=2"]


def test_ld_alpha_changes_the_dpo_update_and_the_manifest_says_so(tmp_path):
    from safetensors.torch import load_file

    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="t")
    store = ctx.open_store()
    cfg = load_config("tiny", DPO)
    base = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    rows = store.read_table(run_stage(get_stage("prepare"), cfg.data.sft, ctx, {})).to_pylist()
    pairs = store.publish_table(
        "test_pairs",
        "trl-test",
        pa.Table.from_pylist(
            [{"prompt": r["prompt"], "chosen": r["reference"], "rejected": "No."} for r in rows[:8]]
        ),
        manifest={},
    )
    inputs = {"start": base, "pairs": pairs}
    plain = run_stage(get_stage("dpo"), cfg.dpo, ctx, inputs)
    ld_cfg = load_config("tiny", [*DPO, "dpo.trl={ld_alpha: 0.5}"]).dpo
    ld = run_stage(get_stage("dpo"), ld_cfg, ctx, inputs)
    assert ld.cache_key != plain.cache_key

    def weights(ref):
        return load_file(str(Path(store.model_dir(ref)) / "model.safetensors"))

    a, b = weights(plain), weights(ld)
    assert any(not (a[k] == b[k]).all() for k in a)  # LD-DPO: a longer answer's tail weighs less
    manifest = store.read_manifest(ld)
    assert manifest["section"] == ld_cfg.model_dump(mode="json")  # as the stage used it
    assert manifest["section"]["trl"] == {"ld_alpha": 0.5}
    assert manifest["section"]["per_device_batch_size"] == 4  # runtime fields too
    assert manifest["config"]["trl"] == {"ld_alpha": 0.5}  # and in the key
