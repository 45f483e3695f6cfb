"""Stage 7, `dpo`: DPO of the policy on the generated pairs; the reference model is the starting
policy itself (pi_imp in SGPO), as in the paper."""
from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import DPOStageConfig
from sgpo.data_sources import conversation
from sgpo.stage import Job, scratch_dir, stage, stage_main


@stage("dpo", section="dpo", gpu=True, description="DPO of the policy on the pairs, reference = the starting policy")
def dpo(job: Job, start: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig) -> ArtifactRef:
    from sgpo.training import train_dpo

    rows = job.read_rows(pairs)
    # A pair whose two answers are identical carries no preference signal.
    data = [(conversation(r), r["chosen"], r["rejected"]) for r in rows if r["chosen"] != r["rejected"]]
    job.log.info("DPO on %d pairs (%d identical skipped)", len(data), len(rows) - len(data))
    with scratch_dir("dpo") as tmp:
        metrics = train_dpo(job.model_dir(start), data, cfg, tmp / "model", tracker=job.tracker,
                            trust_remote_code=job.ctx.trust_remote_code)
        return job.publish_model(tmp / "model", summary={"pairs": len(data), "train_loss": metrics.get("train_loss")},
                                 seeds={"train": cfg.seed}, extra={"train_metrics": metrics, "reference_model": start.uri})


if __name__ == "__main__":
    raise SystemExit(stage_main(dpo))
