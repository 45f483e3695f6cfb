"""What does a cached reference save in DPO? Step time and peak memory of DPO training with the
reference log-probs precomputed (dpo.reference_logps=cached: one model in memory) vs a live frozen
reference model (dpo.reference_logps=live: TRL runs the reference forward every step).

    python benchmarks/dpo_ref.py [--model DIR] [--pairs 64] [--steps 16] [--batch 4] [--max-length 256]

Each mode runs in its own process (so peak memory is its own), on the same pairs (bundled tiny SFT
prompts; chosen = the SFT answer, rejected = a cut, reversed copy). What is measured:
  step time      wall time of trainer.train() / optimiser steps (the one-off log-prob pass of the
                 cached mode is printed separately: it is paid once per (reference, pairs) and then
                 read from the store)
  peak memory    GPU: torch.cuda.max_memory_allocated; CPU: peak RSS of the process (ru_maxrss,
                 includes Python, torch and the data, so the model share is smaller than the total)
  weights held   bytes of the parameters of the models the trainer holds (policy [+ reference])
The machine's 1-minute load average when each mode started is printed beside it.
Target (issue 11): cached <= 0.75x the live step time and about half the model memory.
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


def pairs_data(n: int) -> list:
    from sgpo.data.sources import BUNDLED_DIR

    rows = [
        json.loads(ln)
        for ln in (BUNDLED_DIR / "tiny" / "sft.jsonl").read_text().splitlines()
        if ln.strip()
    ]
    rows = (rows * (n // len(rows) + 1))[:n]
    out = []
    for r in rows:
        answer = next(m["content"] for m in r["messages"] if m["role"] == "assistant")
        out.append(
            (
                [{"role": "user", "content": r["prompt"]}],
                answer,
                answer[::-1][: max(8, len(answer) // 2)],
            )
        )
    return out


def child(mode: str, args: argparse.Namespace) -> None:
    import datasets  # noqa: F401  (imports are not part of any timing)

    from sgpo.config import DPOStageConfig
    from sgpo.train.reference import reference_logps
    from sgpo.train.throughput import peak_rss_gb
    from sgpo.train.trainers import train_dpo

    cfg = DPOStageConfig(
        max_steps=args.steps,
        per_device_batch_size=args.batch,
        effective_batch_size=args.batch,
        max_length=args.max_length,
        learning_rate=1e-4,
        warmup_ratio=0.0,
    )
    data = pairs_data(args.pairs)
    ref, t_ref = None, 0.0
    from sgpo.train.checkpoints import load_model

    load_model(args.model)  # model classes imported before any timing
    load = os.getloadavg()[0]
    if mode == "cached":
        t0 = time.perf_counter()
        ref = reference_logps(
            args.model, data, max_length=cfg.max_length, batch_size=args.batch * 2
        )
        t_ref = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        m = train_dpo(args.model, data, cfg, Path(tmp) / "model", tracker=None, ref_logps=ref)
    print(
        "RESULT "
        + json.dumps(
            {
                "mode": mode,
                "step_s": m["perf.train_seconds"] / args.steps,
                "logps_s": t_ref,
                "peak_gpu_gb": m.get("perf.peak_gpu_mem_gb"),
                "peak_rss_gb": peak_rss_gb(),
                "models": m["perf.models_held"],
                "weights_gb": m["perf.model_weights_gb"],
                "load": load,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--child", choices=["live", "cached"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from ppl import tiny_model

            args.model = tiny_model(Path(tmp) / "model")
        res = {}
        for mode in ("live", "cached"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--model",
                args.model,
                "--pairs",
                str(args.pairs),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--max-length",
                str(args.max_length),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            res[mode] = json.loads(line[-1][7:])
    live, cached = res["live"], res["cached"]
    mem = "peak_gpu_gb" if live["peak_gpu_gb"] is not None else "peak_rss_gb"
    for r in (live, cached):
        print(
            f"{r['mode']:>6}: step {r['step_s'] * 1000:.1f} ms, {mem} {r[mem]:.3f}, models held {r['models']:.0f} "
            f"({r['weights_gb'] * 1024:.1f} MiB of weights)"
            + (f", one-off log-prob pass {r['logps_s']:.2f}s" if r["logps_s"] else "")
            + f" (load {r['load']:.2f})"
        )
    print(
        f"cached/live: step time {cached['step_s'] / live['step_s']:.2f}x, {mem} {cached[mem] / live[mem]:.2f}x, "
        f"weights held {cached['weights_gb'] / live['weights_gb']:.2f}x"
    )


if __name__ == "__main__":
    main()
