"""Throughput and memory of a training run: tokens/s, samples/s, peak memory, MFU (GPU).

What is measured:
* `perf.tokens_per_s`: non-padding tokens of the training sequences the optimiser saw (all
  processes), divided by the wall time of `trainer.train()`. SFT: prompt + completion; DPO:
  prompt + chosen and prompt + rejected.
* `perf.samples_per_s`: examples (SFT) or pairs (DPO) seen, over the same time.
* `perf.peak_gpu_mem_gb`: `torch.cuda.max_memory_allocated` of this process (rank 0), reset at the
  start; `perf.peak_rss_gb`: the process's peak resident set (`ru_maxrss`; on CPU it includes
  everything the process loaded before, so it is an upper bound of the run's own memory).
* `perf.models_held`, `perf.model_weights_gb`: models in memory (policy, + the reference when it is
  live) and their weights' bytes on this rank.
* `perf.mfu`: 6 x parameters x tokens/s / (processes x the GPU's dense bf16 peak), only for GPUs
  whose peak is in PEAK_BF16_FLOPS (the usual 6N estimate: no attention term, no recompute; N is the
  whole model's, counted from its config, so ZeRO-3 / FSDP shards do not shrink it).
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (2**30 if sys.platform == "darwin" else 2**20)


class PeakMemory:
    """Peak GPU memory allocated inside the block (GPU), peak RSS of the process (always)."""

    def __enter__(self) -> PeakMemory:
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.gpu_gb: float | None = None
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            self.gpu_gb = torch.cuda.max_memory_allocated() / 2**30
        self.rss_gb = peak_rss_gb()


def _sequence_tokens(row: dict[str, Any]) -> tuple[int, int]:
    """(tokens, samples) that one dataset row stands for."""
    if "chosen_ids" in row:
        p = len(row["prompt_ids"])
        return 2 * p + len(row["chosen_ids"]) + len(row["rejected_ids"]), 1
    if "input_ids" in row:
        return len(row["input_ids"]), 1
    return 0, 1


def gpu_peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def throughput_metrics(trainer: Any, seconds: float, peak: PeakMemory) -> dict[str, float]:
    ds = trainer.train_dataset
    n = len(ds)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    max_len = getattr(trainer.args, "max_length", None)
    tokens_epoch = 0
    for row in ds:
        t, _ = _sequence_tokens(row)
        tokens_epoch += min(t, 2 * max_len if max_len and "chosen_ids" in row else (max_len or t))
    args = trainer.args
    steps = trainer.state.global_step
    samples = min(
        steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        int(n * max(args.num_train_epochs, 1)) if args.max_steps <= 0 else 10**12,
    )
    tokens = tokens_epoch / max(n, 1) * samples
    out = {
        "perf.train_seconds": round(seconds, 3),
        "perf.samples": float(samples),
        "perf.tokens": float(tokens),
        "perf.samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "perf.tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "perf.processes": float(world),
        "perf.peak_rss_gb": round(peak.rss_gb, 3),
    }
    held = [m for m in (trainer.model, getattr(trainer, "ref_model", None)) if m is not None]
    out["perf.models_held"] = float(len(held))  # 2: a live reference model beside the policy
    out["perf.model_weights_gb"] = round(
        sum(p.numel() * p.element_size() for m in held for p in m.parameters()) / 2**30, 6
    )
    if peak.gpu_gb is not None:
        out["perf.peak_gpu_mem_gb"] = round(peak.gpu_gb, 3)
    flops = gpu_peak_flops()
    if flops and seconds > 0:
        out["perf.mfu"] = (
            6 * full_parameter_count(trainer.model) * out["perf.tokens_per_s"] / (world * flops)
        )
    return out


def full_parameter_count(model: Any) -> int:
    """Parameters of the whole model, however it is sharded: under ZeRO-3 a rank's tensors are empty
    partitions (DeepSpeed keeps the full size in `ds_numel`), under FSDP flat shards. Counted on an
    empty (meta-device) copy built from the model's config when there is one, else from `ds_numel`."""
    config = getattr(model, "config", None)
    if config is not None:
        try:
            import torch
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):
                empty = AutoModelForCausalLM.from_config(config)
            return sum(p.numel() for p in empty.parameters())
        except Exception:  # noqa: BLE001 - a config transformers cannot build: count the tensors
            pass
    return sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters())
