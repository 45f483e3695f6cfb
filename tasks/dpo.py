"""Stage 7, `dpo`: DPO of the policy on the generated pairs; the reference model is the
starting policy itself (pi_imp in SGPO), as in the paper."""
from __future__ import annotations

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import DPOStageConfig, cache_payload
from tasks.common import TASK_DEFAULTS, StageContext, manifest, scratch_dir, stage_logger

STAGE = "dpo"
CODE_VERSION = "1"


def cache_key(start: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig) -> str:
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=cache_payload(cfg),
        inputs={"start": start.content_hash, "pairs": pairs.content_hash},
    )


def run_dpo(start: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig, ctx: StageContext) -> ArtifactRef:
    from sgpo.training import train_dpo

    store = ctx.open_store()
    key = cache_key(start, pairs, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    rows = store.read_table(pairs).to_pylist()
    # A pair whose two answers are identical carries no preference signal.
    data = [([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in rows if r["chosen"] != r["rejected"]]
    stage_logger(STAGE).info("DPO on %d pairs (%d identical skipped)", len(data), len(rows) - len(data))
    with ctx.tracked(STAGE, cache_payload(cfg)) as tracker, scratch_dir(STAGE) as tmp:
        metrics = train_dpo(store.model_dir(start), data, cfg, tmp / "model", tracker=tracker,
                            trust_remote_code=ctx.trust_remote_code)
        ref = store.publish_model(
            STAGE, key, tmp / "model",
            manifest=manifest(STAGE, CODE_VERSION, cache_payload(cfg), {"start": start, "pairs": pairs},
                              seeds={"train": cfg.seed}, extra={"train_metrics": metrics, "reference_model": start.uri}),
            summary={"pairs": len(data), "train_loss": metrics.get("train_loss")}, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


@task(name="dpo", cache_key_fn=lambda _c, p: cache_key(p["start"], p["pairs"], p["cfg"]), tags=["gpu"], **TASK_DEFAULTS)
def dpo_task(start: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_dpo(start, pairs, cfg, ctx)
