"""Stage 7, `dpo`: DPO of the policy on the generated pairs; the reference model is the starting
policy itself (pi_imp in SGPO), as in the paper.

With `dpo.reference_logps: cached` (the default) the reference's log-probs come from the `ref_logps`
stage that runs before it, so training holds one model; run alone without `--ref_logps`, the stage
computes them itself (not published: run `sgpo stage ref_logps` first to keep them). With `live`, a
frozen reference model sits beside the policy.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import DPOStageConfig
from sgpo.core import Job, scratch_dir, stage, stage_main
from sgpo.train.launch import ACCELERATE


@stage(
    "dpo",
    section="dpo",
    gpu=True,
    launcher=ACCELERATE,
    derived_inputs=("ref_logps",),
    description="DPO of the policy on the pairs, reference = the starting policy",
)
def dpo(
    job: Job,
    start: ArtifactRef,
    pairs: ArtifactRef,
    ref_logps: ArtifactRef | None,
    cfg: DPOStageConfig,
) -> ArtifactRef:
    from sgpo.train.reference import logps_from_table, preference_pairs, reference_logps
    from sgpo.train.trainers import train_dpo

    rows = job.read_rows(pairs)
    data = preference_pairs(rows)
    job.log.info(
        "DPO on %d pairs (%d skipped: identical or empty answers)", len(data), len(rows) - len(data)
    )
    extra = {"reference_model": start.uri}
    logps = None
    if cfg.reference_logps == "live":
        if ref_logps is not None:
            raise ValueError(
                "dpo.reference_logps=live trains beside a live reference model: the given ref_logps "
                f"table ({ref_logps.uri}) would be ignored; drop it or set reference_logps=cached"
            )
    elif ref_logps is not None:
        logps = logps_from_table(job.read_rows(ref_logps), data)
        extra["reference_logps"] = ref_logps.uri
    elif data:
        logps = reference_logps(
            job.model_dir(start),
            data,
            max_length=cfg.max_length,
            batch_size=cfg.reference_batch_size,
            bf16=cfg.bf16,
            trust_remote_code=job.ctx.trust_remote_code,
            trl_args=cfg.trl,
        )
    with scratch_dir("dpo") as tmp:
        metrics = train_dpo(
            job.model_dir(start),
            data,
            cfg,
            tmp / "model",
            tracker=job.tracker,
            trust_remote_code=job.ctx.trust_remote_code,
            ref_logps=logps,
        )
        return job.publish_model(
            tmp / "model",
            summary={"pairs": len(data), "train_loss": metrics.get("train_loss")},
            seeds={"train": cfg.seed},
            extra={"train_metrics": metrics, **extra},
        )


if __name__ == "__main__":
    raise SystemExit(stage_main(dpo))
