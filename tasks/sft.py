"""Stage 1, `sft`: supervised fine-tuning of the base model on D_sft -> the initial policy pi_sft."""
from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import SFTStageConfig
from sgpo.data_sources import conversation
from sgpo.stage import Job, scratch_dir, stage, stage_main


@stage("sft", section="sft", gpu=True, description="supervised fine-tuning of the base model on D_sft -> pi_sft")
def sft(job: Job, base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig) -> ArtifactRef:
    from sgpo.training import train_sft

    examples = [(conversation(r), r["reference"]) for r in job.read_rows(data)]
    job.log.info("SFT on %d examples from %s", len(examples), data.uri)
    with scratch_dir("sft") as tmp:
        metrics = train_sft(job.model_dir(base), examples, cfg, tmp / "model", tracker=job.tracker,
                            trust_remote_code=job.ctx.trust_remote_code)
        return job.publish_model(tmp / "model", summary={"examples": len(examples), "train_loss": metrics.get("train_loss")},
                                 seeds={"train": cfg.seed}, extra={"train_metrics": metrics})


if __name__ == "__main__":
    raise SystemExit(stage_main(sft))
