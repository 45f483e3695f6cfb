"""Stage 2, `sample`: for each (x, y_sft) in D_imp, sample y ~ pi_sft(x) (temperature 0.7, top-p 0.9).

Output columns: prompt_id, prompt, reference (y_sft, response-A), policy (y, response-B),
sample_index, policy_finish_reason.
"""
from __future__ import annotations

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import SampleStageConfig, cache_payload
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE = "sample"
CODE_VERSION = "1"


def cache_key(policy: ArtifactRef, data: ArtifactRef, cfg: SampleStageConfig) -> str:
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=cache_payload(cfg),
        inputs={"policy": policy.content_hash, "data": data.content_hash},
    )


def run_sample(policy: ArtifactRef, data: ArtifactRef, cfg: SampleStageConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generation import open_generator

    store = ctx.open_store()
    key = cache_key(policy, data, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    rows = store.read_table(data).to_pylist()
    log = stage_logger(STAGE)
    log.info("sampling %d x %d responses with %s", len(rows), cfg.sampling.n, cfg.sampling.backend)
    with ctx.tracked(STAGE, cache_payload(cfg)) as tracker:
        gen = open_generator(store.model_dir(policy), cfg.sampling, trust_remote_code=ctx.trust_remote_code)
        try:
            outs = gen.generate([[{"role": "user", "content": r["prompt"]}] for r in rows], cfg.sampling)
        finally:
            gen.close()
        table = []
        for r, samples in zip(rows, outs):
            for k, g in enumerate(samples):
                table.append({**r, "policy": g.text, "sample_index": k, "policy_finish_reason": g.finish_reason})
        n_length = sum(t["policy_finish_reason"] == "length" for t in table)
        summary = {"samples": len(table), "truncated": n_length,
                   "mean_tokens": sum(g.completion_tokens for s in outs for g in s) / max(len(table), 1)}
        tracker.log_metrics(summary)
        ref = store.publish_table(
            STAGE, key, pa.Table.from_pylist(table),
            manifest=manifest(STAGE, CODE_VERSION, cache_payload(cfg), {"policy": policy, "data": data},
                              seeds={"sampling": cfg.sampling.seed}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


@task(name="sample", cache_key_fn=lambda _c, p: cache_key(p["policy"], p["data"], p["cfg"]), tags=["gpu"], **TASK_DEFAULTS)
def sample_task(policy: ArtifactRef, data: ArtifactRef, cfg: SampleStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_sample(policy, data, cfg, ctx)
