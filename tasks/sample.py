"""Stage 2, `sample`: for each (x, y_sft) in D_imp, sample y ~ pi_sft(x) (temperature 0.7, top-p 0.9).

Output columns: prompt_id, prompt, reference (y_sft, response-A), policy (y, response-B),
sample_index, policy_finish_reason.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import SampleStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import conversation


@stage(
    "sample",
    section="sample",
    # 2: the transformers back-end seeds each sample (not each batch); the back-end is in the key
    code_version="2",
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
    table = []
    for r, samples in zip(rows, outs):
        for k, g in enumerate(samples):
            table.append(
                {**r, "policy": g.text, "sample_index": k, "policy_finish_reason": g.finish_reason}
            )
    summary = {
        "samples": len(table),
        "truncated": sum(t["policy_finish_reason"] == "length" for t in table),
        "mean_tokens": sum(g.completion_tokens for s in outs for g in s) / max(len(table), 1),
    }
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table), summary=summary, seeds={"sampling": cfg.sampling.seed}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(sample))
