"""Stage 1, `sft`: supervised fine-tuning of the base model on D_sft -> the initial policy pi_sft."""
from __future__ import annotations

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import SFTStageConfig, cache_payload
from tasks.common import TASK_DEFAULTS, StageContext, manifest, scratch_dir, stage_logger

STAGE = "sft"
CODE_VERSION = "1"


def cache_key(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig) -> str:
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=cache_payload(cfg),
        inputs={"base": base.content_hash, "data": data.content_hash},
    )


def run_sft(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, ctx: StageContext) -> ArtifactRef:
    from sgpo.training import train_sft

    store = ctx.open_store()
    key = cache_key(base, data, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    rows = store.read_table(data).to_pylist()
    examples = [([{"role": "user", "content": r["prompt"]}], r["reference"]) for r in rows]
    stage_logger(STAGE).info("SFT on %d examples from %s", len(examples), data.uri)
    with ctx.tracked(STAGE, cache_payload(cfg)) as tracker, scratch_dir(STAGE) as tmp:
        metrics = train_sft(store.model_dir(base), examples, cfg, tmp / "model", tracker=tracker,
                            trust_remote_code=ctx.trust_remote_code)
        ref = store.publish_model(
            STAGE, key, tmp / "model",
            manifest=manifest(STAGE, CODE_VERSION, cache_payload(cfg), {"base": base, "data": data},
                              seeds={"train": cfg.seed}, extra={"train_metrics": metrics}),
            summary={"examples": len(examples), "train_loss": metrics.get("train_loss")}, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


@task(name="sft", cache_key_fn=lambda _c, p: cache_key(p["base"], p["data"], p["cfg"]), tags=["gpu"], **TASK_DEFAULTS)
def sft_task(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_sft(base, data, cfg, ctx)
