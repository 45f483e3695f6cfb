"""What does LoRA save over full fine-tuning in SFT? Step time and peak memory of the project's own
SFT (sgpo.train.trainers.train_sft) with `lora: {r: 16}` (peft adapters on every linear layer but the
head, merged into a full checkpoint at the end) vs full fine-tuning, same model, data and settings.

    python benchmarks/lora.py [--model DIR] [--examples 64] [--steps 8] [--batch 4] [--max-length 256]

Each variant runs in its own process (so peak memory is its own), on the bundled tiny SFT rows
(prompt, answer) repeated to --examples, fp32, learning rate 1e-4, no warm-up. What is measured:
  step time      wall time of trainer.train() / optimiser steps (perf.train_seconds)
  peak memory    GPU: torch.cuda.max_memory_allocated during training; CPU: peak RSS of the process
                 at the end of training (ru_maxrss, perf.peak_rss_gb: Python, torch and the data
                 included), and the process's peak RSS after the save too (LoRA merges its adapter
                 into a reloaded base model there)
  whole call     train_sft from start to saved checkpoint (model load, training, save / merge)
Without --model the tiny kit's model is built in a temporary folder. The machine's 1-minute load
average is printed beside each variant: on a shared machine it explains most of the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sft_examples(n: int) -> list:
    from sgpo.data.sources import BUNDLED_DIR

    rows = [
        json.loads(ln)
        for ln in (BUNDLED_DIR / "tiny" / "sft.jsonl").read_text().splitlines()
        if ln.strip()
    ]
    rows = (rows * (n // len(rows) + 1))[:n]
    return [
        (
            [{"role": "user", "content": r["prompt"]}],
            next(m["content"] for m in r["messages"] if m["role"] == "assistant"),
        )
        for r in rows
    ]


def child(mode: str, args: argparse.Namespace) -> None:
    import datasets  # noqa: F401  (imports are not part of any timing)
    import peft  # noqa: F401
    import trl  # noqa: F401

    from sgpo.config import LoRAConfig, SFTStageConfig
    from sgpo.train.throughput import peak_rss_gb
    from sgpo.train.trainers import train_sft

    cfg = SFTStageConfig(
        max_steps=args.steps,
        per_device_batch_size=args.batch,
        effective_batch_size=args.batch,
        max_length=args.max_length,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        lora=LoRAConfig(r=args.rank) if mode == "lora" else None,
    )
    data = sft_examples(args.examples)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = train_sft(args.model, data, cfg, Path(tmp) / "model", tracker=None)
        whole = time.perf_counter() - t0
    print(
        "RESULT "
        + json.dumps(
            {
                "mode": mode,
                "step_s": m["perf.train_seconds"] / args.steps,
                "whole_s": whole,
                "tokens_per_s": m["perf.tokens_per_s"],
                "peak_gpu_gb": m.get("perf.peak_gpu_mem_gb"),
                "peak_rss_gb": m["perf.peak_rss_gb"],
                "process_rss_gb": peak_rss_gb(),
                "loss": m.get("train_loss"),
                "load": load,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    ap.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from ppl import tiny_model

            args.model = tiny_model(Path(tmp) / "model")
        res = {}
        for mode in ("full", "lora"):
            cmd = [sys.executable, __file__, "--child", mode, "--model", args.model]
            for flag in ("examples", "steps", "batch", "max_length", "rank"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            res[mode] = json.loads(line[-1][7:])
    full, lora = res["full"], res["lora"]
    gpu = full["peak_gpu_gb"] is not None
    mem = "peak_gpu_gb" if gpu else "peak_rss_gb"
    print(
        f"SFT on {Path(args.model).name}: {args.steps} steps of batch {args.batch}, max_length "
        f"{args.max_length}, {args.examples} examples, LoRA r={args.rank} (all linear layers)"
    )
    for r in (full, lora):
        print(
            f"{r['mode']:>4}: step {r['step_s'] * 1000:.0f} ms ({r['tokens_per_s']:.0f} tokens/s), "
            f"{mem} {r[mem]:.3f} in training"
            + ("" if gpu else f", {r['process_rss_gb']:.3f} with the save")
            + f", whole train_sft {r['whole_s']:.1f}s, loss {r['loss']:.3f} (load {r['load']:.2f})"
        )
    print(
        f"lora/full: step time {lora['step_s'] / full['step_s']:.2f}x, {mem} in training "
        f"{lora[mem] / full[mem]:.2f}x"
        + ("" if gpu else f", with the save {lora['process_rss_gb'] / full['process_rss_gb']:.2f}x")
        + f", whole train_sft {lora['whole_s'] / full['whole_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
