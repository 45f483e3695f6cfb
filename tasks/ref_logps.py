"""Stage `ref_logps`: the DPO reference's log-probs of every pair's chosen and rejected answer.

Computed once, batched and length-sorted without gradients (sgpo.train.reference), keyed by the
reference checkpoint, the pairs and what truncates them (`max_length`), so `dpo` trains with one
model in memory and a variant with the same reference and pairs (another beta, learning rate, loss)
reads them from the store. Runs before each DPO step whose section says `reference_logps: cached`.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import RefLogpsConfig
from sgpo.core import Job, stage, stage_main
from sgpo.train.launch import ACCELERATE


@stage(
    "ref_logps",
    section="dpo",
    gpu=True,
    launcher=ACCELERATE,
    description="the DPO reference's log-probs of each pair's chosen and rejected answer, once",
)
def ref_logps(
    job: Job, reference: ArtifactRef, pairs: ArtifactRef, cfg: RefLogpsConfig
) -> ArtifactRef:
    from sgpo.train.reference import logps_table, preference_pairs, reference_logps_and_tokens

    rows = job.read_rows(pairs)
    data = preference_pairs(rows)
    job.log.info(
        "reference log-probs of %d pairs (%d identical skipped)", len(data), len(rows) - len(data)
    )
    scored = reference_logps_and_tokens(
        job.model_dir(reference),
        data,
        max_length=cfg.max_length,
        batch_size=cfg.reference_batch_size,
        bf16=cfg.bf16,
        trust_remote_code=job.ctx.trust_remote_code,
        trl_args=cfg.trl,
    )
    return job.publish_table(logps_table(data, scored), summary={"pairs": len(data)})


if __name__ == "__main__":
    raise SystemExit(stage_main(ref_logps))
