"""Stage `sapo`: self-augmented preference optimisation (the SAPO paper) from an SFT policy.

One long GPU stage around `sgpo.train.sapo.train_sapo`: for each mini-batch of (x, y+) the EMA model
regenerates a segment of y+ to make y-, the pair goes to a FIFO replay buffer, and a DPO or ORPO
step trains on a use-weighted draw from the buffer (details in sgpo/train/sapo). Inputs: the policy to
start from and a prepared table whose `messages` are the prompt conversation and `reference` the
chosen answer. Output: the final policy (safetensors), with `ema/` (the EMA model's weights) and
`buffer.parquet` (every replay buffer: buffer index, x, y+, y-, cut position, use count, producing
step) beside it.

Several processes: `sapo.launch` (or the recipe's `hardware`) launches the stage through accelerate
(DDP); each process holds `sapo.buffers / processes` replay buffers, so the run, its key and its
artifact are the same on any number of processes that divides `sapo.buffers`
(sgpo/train/sapo/launch.py); rank 0 publishes.

Resume: checkpoints (policy, EMA, optimiser, scheduler, buffer with use counts, RNG states;
safetensors + Parquet + JSON, nothing pickled) go to the stage's `_work/checkpoints` folder in the
store every `checkpoint_every` steps and on SIGTERM; the folder is keyed by the stage's cache key,
so a killed run, re-run with the same inputs and config, resumes where it stopped (with any
number of processes: each process reads the buffers it holds).
Metrics go to the stage's MLflow run at each logging step.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import SAPOConfig
from sgpo.core import Job, scratch_dir, stage, stage_main
from sgpo.data.sources import conversation
from sgpo.train.sapo.launch import SAPO_ACCELERATE


@stage(
    "sapo",
    section="sapo",
    # 2: y+ and y- end with the chat template's end of turn (segment.py); generation_batch_size and
    # micro_batch_size are in the key (they change what is trained)
    code_version="2",
    gpu=True,
    launcher=SAPO_ACCELERATE,
    description="SAPO: EMA-regenerated segments as rejected answers, a replay buffer, DPO/ORPO steps; resumable",
)
def sapo(job: Job, policy: ArtifactRef, data: ArtifactRef, cfg: SAPOConfig) -> ArtifactRef:
    from sgpo.train.sapo import train_sapo

    rows = [(conversation(r), r["reference"]) for r in job.read_rows(data)]
    job.log.info(
        "SAPO (%s) on %d rows from %s, checkpoints in %s",
        cfg.loss,
        len(rows),
        data.uri,
        job.work_url + "/checkpoints",
    )
    with scratch_dir("sapo") as tmp:
        result = train_sapo(
            job.model_dir(policy),
            rows,
            cfg,
            out_dir=tmp / "model",
            ema_out_dir=tmp / "model" / "ema",
            checkpoint_url=job.work_url + "/checkpoints",
            storage_options=job.store.storage_options,
            on_metrics=lambda step, metrics: _log_step(job, step, metrics),
            trust_remote_code=job.ctx.trust_remote_code,
        )
        if not job.is_main_process:
            return None  # type: ignore[return-value]  # rank 0 publishes
        if result.resumed_from_step is not None:
            job.log.info("SAPO resumed from the checkpoint of step %d", result.resumed_from_step)
        summary = {
            "steps": result.steps,
            "rows_dropped_long_prompt": result.prompts_dropped,
            "ema_updates": result.ema_updates,
            "buffer_size": result.buffer_size,
            "buffer_mean_uses": result.buffer_mean_uses,
            "resumed_from_step": result.resumed_from_step,
            **{f"seconds_{k}": round(v, 3) for k, v in result.timings.items()},
        }
        job.log_metrics(summary)
        buffer = _final_buffer(job)
        if buffer is not None:  # beside the model, before the manifest
            job.publish_bytes("buffer.parquet", buffer)
        return job.publish_model(
            tmp / "model",
            summary=summary,
            seeds={"sapo": cfg.seed},
            extra={
                "loss": cfg.loss,
                "reference": cfg.reference,
                "last_metrics": result.last_metrics,
            },
        )


def _log_step(job: Job, step: int, metrics: dict) -> None:
    """A logging step to MLflow and to the manifest's `train_history` (the report's SAPO curves)."""
    job.log_metrics(metrics, step=step)
    if job.tracker is not None:
        job.tracker.history.append(
            {
                "step": step,
                **{
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                },
            }
        )


def _final_buffer(job: Job) -> bytes | None:
    """The newest checkpoint's replay buffers as one Parquet file (the buffers as the run ended)."""
    import io

    import pyarrow.parquet as pq

    from sgpo.train.sapo.checkpoint import latest_checkpoint, read_buffers

    folder = latest_checkpoint(job.work_url + "/checkpoints", job.store.storage_options)
    if folder is None:
        return None
    out = io.BytesIO()
    pq.write_table(read_buffers(folder, job.store.storage_options), out, compression="zstd")
    return out.getvalue()


if __name__ == "__main__":
    raise SystemExit(stage_main(sapo))
