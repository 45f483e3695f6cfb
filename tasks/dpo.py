"""Stage 7, `dpo`: DPO of the policy on the generated pairs; the reference model is the starting
policy itself (pi_imp in SGPO), as in the paper.

With `dpo.reference_logps: cached` (the default) the reference's log-probs of every chosen and
rejected answer are computed once, batched and length-sorted without gradients, into a Parquet
artifact `ref_logps/<key>` keyed by (reference checkpoint, pairs, tokenisation settings); training
then holds one model. A re-run, or a variant with the same reference and pairs (another beta,
learning rate, loss), reads them from the store and pays nothing.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config.pipeline import DPOStageConfig
from sgpo.core.stage import Job, scratch_dir, stage, stage_main
from sgpo.data.sources import conversation

REF_LOGPS_STAGE = "ref_logps"
REF_LOGPS_VERSION = "2"  # 2: the scored answer tokens of each sum (chosen_tokens, rejected_tokens)


def ref_logps_key(reference: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig) -> str:
    """(reference checkpoint, pairs, tokenisation settings): nothing else changes the log-probs."""
    from artifacts.hashing import stage_cache_key

    return stage_cache_key(
        REF_LOGPS_STAGE,
        code_version=REF_LOGPS_VERSION,
        config={
            "max_length": cfg.max_length,
            "truncation_mode": "keep_start",
            "skip_identical": True,
        },
        inputs={"reference": reference.content_hash, "pairs": pairs.content_hash},
    )


def cached_reference_logps(
    job: Job, reference: ArtifactRef, pairs: ArtifactRef, data: list, cfg: DPOStageConfig
) -> tuple[list[tuple[float, float]], ArtifactRef | None, bool]:
    """(log-probs per pair, their artifact, found in the store). Rank 0 looks up and publishes; under a
    launch every rank computes a share and all take rank 0's decision."""
    import pyarrow as pa

    from artifacts.hashing import sha256_text
    from sgpo.train.trainers import main_process_value, reference_logps_and_tokens

    key = ref_logps_key(reference, pairs, cfg)
    store = job.store
    hashes = [sha256_text(repr((p, c, r)))[:16] for p, c, r in data]
    found = (
        store.find(REF_LOGPS_STAGE, key) if job.is_main_process and not job.ctx.refresh else None
    )
    uri = main_process_value(found.uri if found is not None else None)
    if uri is not None:
        from artifacts.store import read_ref

        ref = found or read_ref(uri, job.ctx.store.storage_options)
        rows = store.read_table(ref).to_pylist()
        if [r["pair_hash"] for r in rows] == hashes:
            return [(r["ref_chosen_logps"], r["ref_rejected_logps"]) for r in rows], ref, True
        raise RuntimeError(
            f"{uri}: cached reference log-probs do not match the pairs (rows differ)"
        )
    scored = reference_logps_and_tokens(
        job.model_dir(reference),
        data,
        cfg,
        batch_size=cfg.reference_batch_size,
        trust_remote_code=job.ctx.trust_remote_code,
    )
    logps = [(a, b) for a, b, _, _ in scored]
    if not job.is_main_process:
        return logps, None, False
    table = pa.table(
        {
            "pair_index": list(range(len(data))),
            "pair_hash": hashes,
            "ref_chosen_logps": [a for a, _ in logps],
            "ref_rejected_logps": [b for _, b in logps],
            "chosen_tokens": [n for _, _, n, _ in scored],
            "rejected_tokens": [n for _, _, _, n in scored],
        }
    )
    manifest = {
        "stage": REF_LOGPS_STAGE,
        "code_version": REF_LOGPS_VERSION,
        "config": {"max_length": cfg.max_length, "truncation_mode": "keep_start"},
        "parents": {
            "reference": {"uri": reference.uri, "content_hash": reference.content_hash},
            "pairs": {"uri": pairs.uri, "content_hash": pairs.content_hash},
        },
    }
    ref = store.publish_table(
        REF_LOGPS_STAGE,
        key,
        table,
        manifest=manifest,
        summary={"pairs": len(data)},
        produced_by=job.ctx.run_id,
    )
    return logps, ref, False


@stage(
    "dpo",
    section="dpo",
    gpu=True,
    description="DPO of the policy on the pairs, reference = the starting policy",
)
def dpo(job: Job, start: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig) -> ArtifactRef:
    from sgpo.train.trainers import train_dpo

    rows = job.read_rows(pairs)
    # A pair whose two answers are identical carries no preference signal.
    data = [
        (conversation(r), r["chosen"], r["rejected"]) for r in rows if r["chosen"] != r["rejected"]
    ]
    job.log.info("DPO on %d pairs (%d identical skipped)", len(data), len(rows) - len(data))
    extra = {"reference_model": start.uri}
    ref_logps = None
    if cfg.reference_logps == "cached" and data:
        ref_logps, ref_table, hit = cached_reference_logps(job, start, pairs, data, cfg)
        if ref_table is not None:
            extra["reference_logps"] = ref_table.uri
            job.log.info(
                "reference log-probs %s: %s", "from the store" if hit else "computed", ref_table.uri
            )
    with scratch_dir("dpo") as tmp:
        metrics = train_dpo(
            job.model_dir(start),
            data,
            cfg,
            tmp / "model",
            tracker=job.tracker,
            trust_remote_code=job.ctx.trust_remote_code,
            ref_logps=ref_logps,
        )
        return job.publish_model(
            tmp / "model",
            summary={"pairs": len(data), "train_loss": metrics.get("train_loss")},
            seeds={"train": cfg.seed},
            extra={"train_metrics": metrics, **extra},
        )


if __name__ == "__main__":
    raise SystemExit(stage_main(dpo))
