"""Stage 1, `sft`: supervised fine-tuning of the base model on D_sft -> the initial policy pi_sft."""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import SFTStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import conversation
from sgpo.train.launch import ACCELERATE


@stage(
    "sft",
    section="sft",
    gpu=True,
    launcher=ACCELERATE,
    description="supervised fine-tuning of the base model on D_sft -> pi_sft",
)
def sft(job: Job, base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig) -> ArtifactRef:
    from sgpo.train.trainers import sft_and_publish

    examples = [(conversation(r), r["reference"]) for r in job.read_rows(data)]
    job.log.info("SFT on %d examples from %s", len(examples), data.uri)
    return sft_and_publish(job, base, examples, cfg)


if __name__ == "__main__":
    raise SystemExit(stage_main(sft))
