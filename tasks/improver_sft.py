"""Stage 5, `improver_sft`: train pi_sft to improve its own responses -> pi_imp.

Inputs are the improver prompt (instruction + policy response, WITHOUT the SFT reference,
unless the All-Ref ablation turns `with_reference` on); targets are the filtered y_imp and/or
y_ext. With shared parameters (SGPO) pi_imp is both the policy and the improver.
"""
from __future__ import annotations

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import ImproverSFTStageConfig, cache_payload
from sgpo.prompts import load_prompt
from tasks.common import TASK_DEFAULTS, StageContext, manifest, scratch_dir, stage_logger

STAGE = "improver_sft"
CODE_VERSION = "1"


def prompt_name(cfg: ImproverSFTStageConfig) -> str:
    return cfg.reference_prompt if cfg.with_reference else cfg.prompt


def cache_key(start: ArtifactRef, filtered: ArtifactRef, cfg: ImproverSFTStageConfig) -> str:
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=cache_payload(cfg),
        inputs={"start": start.content_hash, "filtered": filtered.content_hash},
        prompts={"improver": load_prompt(prompt_name(cfg)).version},
    )


def improver_examples(rows: list[dict], cfg: ImproverSFTStageConfig) -> list[tuple[list[dict[str, str]], str]]:
    prompt = load_prompt(prompt_name(cfg))
    out = []
    for r in rows:
        if not r.get("kept") or r["target_type"] not in cfg.targets:
            continue
        fields = {"instruction": r["prompt"], "response": r["policy"]}
        if cfg.with_reference:
            fields["reference"] = r["reference"]
        out.append(([{"role": "user", "content": prompt.render(**fields)}], r["target"]))
    return out


def run_improver_sft(start: ArtifactRef, filtered: ArtifactRef, cfg: ImproverSFTStageConfig, ctx: StageContext) -> ArtifactRef:
    from sgpo.training import TrainingDataError, train_sft

    store = ctx.open_store()
    key = cache_key(start, filtered, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    examples = improver_examples(store.read_table(filtered).to_pylist(), cfg)
    if not examples:
        raise TrainingDataError(f"{filtered.uri}: no kept rows with target types {cfg.targets}")
    stage_logger(STAGE).info("improver SFT on %d examples (targets %s)", len(examples), cfg.targets)
    with ctx.tracked(STAGE, cache_payload(cfg)) as tracker, scratch_dir(STAGE) as tmp:
        metrics = train_sft(store.model_dir(start), examples, cfg, tmp / "model", tracker=tracker,
                            trust_remote_code=ctx.trust_remote_code)
        ref = store.publish_model(
            STAGE, key, tmp / "model",
            manifest=manifest(STAGE, CODE_VERSION, cache_payload(cfg), {"start": start, "filtered": filtered},
                              prompts={"improver": load_prompt(prompt_name(cfg)).version},
                              seeds={"train": cfg.seed}, extra={"train_metrics": metrics}),
            summary={"examples": len(examples), "train_loss": metrics.get("train_loss")}, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


@task(name="improver_sft", cache_key_fn=lambda _c, p: cache_key(p["start"], p["filtered"], p["cfg"]), tags=["gpu"], **TASK_DEFAULTS)
def improver_sft_task(start: ArtifactRef, filtered: ArtifactRef, cfg: ImproverSFTStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_improver_sft(start, filtered, cfg, ctx)
