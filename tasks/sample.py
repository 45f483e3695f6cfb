"""Stage 2, `sample`: for each (x, y_sft) in D_imp, sample y ~ pi_sft(x) (temperature 0.7, top-p 0.9).

Output columns: prompt_id, prompt, reference (y_sft, response-A), policy (y, response-B),
sample_index, policy_finish_reason.

An empty (or whitespace) answer is dropped and counted (summary `empty_dropped`, the stage line):
there is no response B to improve, so the row would teach the improver nothing about refining, and
the external LLM would be paid to write an answer from scratch. More than `sample.max_empty_fraction`
of them fails the stage: the policy is broken, and nothing downstream can repair it.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import SampleStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.core.job import EMPTY_DROPPED
from sgpo.data.sources import check_empty_answers, check_empty_reused, conversation, is_empty_answer


def check_reused(ref: ArtifactRef, cfg: SampleStageConfig) -> None:
    """A stored artifact is reused only if its share of empty answers is one this config accepts."""
    check_empty_reused("sample", ref, "samples", cfg.max_empty_fraction)


@stage(
    "sample",
    section="sample",
    check_reuse=check_reused,
    # 2, 3: empty answers dropped; the transformers back-end seeds each sample (not each batch; the
    # back-end is in the key)
    code_version="3",
    gpu=True,
    description="sample y ~ pi_sft(x) on D_imp (temperature 0.7, top-p 0.9)",
)
def sample(job: Job, policy: ArtifactRef, data: ArtifactRef, cfg: SampleStageConfig) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generate import open_generator

    rows = job.read_rows(data)
    job.log.info(
        "sampling %d x %d responses with %s", len(rows), cfg.sampling.n, cfg.sampling.backend
    )
    gen = open_generator(
        job.model_dir(policy), cfg.sampling, trust_remote_code=job.ctx.trust_remote_code
    )
    try:
        outs = gen.generate([conversation(r) for r in rows], cfg.sampling)
    finally:
        gen.close()
    table, empty = [], 0
    for r, samples in zip(rows, outs):
        for k, g in enumerate(samples):
            if is_empty_answer(g.text):
                empty += 1
                continue
            table.append(
                {**r, "policy": g.text, "sample_index": k, "policy_finish_reason": g.finish_reason}
            )
    generated = [g for s in outs for g in s]
    check_empty_answers(
        "sample", empty, len(generated), cfg.max_empty_fraction, "sample.max_empty_fraction"
    )
    if empty:
        job.log.warning("dropped %d empty answers of %d", empty, len(generated))
    summary = {
        "samples": len(table),
        EMPTY_DROPPED: empty,
        "truncated": sum(t["policy_finish_reason"] == "length" for t in table),
        "mean_tokens": sum(g.completion_tokens for g in generated) / max(len(generated), 1),
    }
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table), summary=summary, seeds={"sampling": cfg.sampling.seed}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(sample))
