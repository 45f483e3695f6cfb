"""Stage `orpo`: ORPO of a model on preference pairs (the SAPO paper's ORPO baseline, on the published
Distilabel-Capybara pairs; and each iteration of its SPIN-ORPO baseline, on pairs of y_sft against the
policy's own answer). ORPO adds lambda x an odds-ratio term to the SFT loss of the chosen answer
and keeps no reference model, so it may start from a raw base model (the paper does): the chat
template is the start model's (`model.chat_template` gives a raw base one).
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import ORPOStageConfig
from sgpo.core import Job, scratch_dir, stage, stage_main
from sgpo.train.launch import ACCELERATE


@stage(
    "orpo",
    section="orpo",
    gpu=True,
    launcher=ACCELERATE,
    description="ORPO of the model on preference pairs (SFT loss + lambda x odds ratio; no reference)",
)
def orpo(job: Job, start: ArtifactRef, pairs: ArtifactRef, cfg: ORPOStageConfig) -> ArtifactRef:
    from sgpo.train.reference import preference_pairs
    from sgpo.train.trainers import train_orpo

    rows = job.read_rows(pairs)
    data = preference_pairs(rows)
    job.log.info("ORPO on %d pairs (%d identical skipped)", len(data), len(rows) - len(data))
    with scratch_dir("orpo") as tmp:
        metrics = train_orpo(
            job.model_dir(start),
            data,
            cfg,
            tmp / "model",
            tracker=job.tracker,
            trust_remote_code=job.ctx.trust_remote_code,
        )
        return job.publish_model(
            tmp / "model",
            summary={"pairs": len(data), "train_loss": metrics.get("train_loss")},
            seeds={"train": cfg.seed},
            extra={"train_metrics": metrics},
        )


if __name__ == "__main__":
    raise SystemExit(stage_main(orpo))
