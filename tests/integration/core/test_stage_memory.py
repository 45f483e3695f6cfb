"""A stage's models are freed when it returns (issue 20, memory): TRL's trainers hold the model and
its optimiser in reference cycles, which only the cycle collector frees whenever it next runs; in a
pipeline (one process) the reference model of `ref_logps` then sat beside the policy, optimiser and
reference-free batches of `dpo`."""

from __future__ import annotations

import gc
import weakref

import pyarrow as pa

from artifacts.store import ArtifactStore
from sgpo.config import RefLogpsConfig, StoreConfig
from sgpo.core import StageContext, run_stage
from tasks import get_stage


def test_the_reference_model_is_freed_when_ref_logps_returns(tiny_model_dir, tmp_path, monkeypatch):
    import sgpo.train.reference as reference

    loaded = []
    load = reference.load_model

    def spy(*args, **kwargs):
        model = load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(reference, "load_model", spy)
    store = ArtifactStore(str(tmp_path / "store"))
    rows = [{"prompt": f"Q{i}?", "chosen": "A fine answer.", "rejected": "No."} for i in range(4)]
    pairs = store.publish_table("pairs", "p" * 64, pa.Table.from_pylist(rows), manifest={})
    model = store.publish_model("sft", "m" * 64, tiny_model_dir, manifest={})
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    gc.disable()  # only what the stage framework collects
    try:
        run_stage(
            get_stage("ref_logps"),
            RefLogpsConfig(max_length=64),
            ctx,
            {"reference": model, "pairs": pairs},
        )
        assert len(loaded) == 1 and loaded[0]() is None
    finally:
        gc.enable()
