"""Where does a SAPO iteration spend its time? generation / training / EMA / checkpoint.

Runs the tiny SAPO loop (`sgpo.train.sapo.train_sapo`) on the tiny kit's model and the bundled rows and
prints the mean time per iteration of each part, and the generation share of the iteration
(the goal on CPU: generation under half of it). The first `--warmup` iterations are left out
(first-call costs). Checkpoint time is amortised over the iterations between checkpoints.

    .venv/bin/python benchmarks/sapo.py [--loss dpo|orpo] [--steps 12] [--batch-size 4]
        [--segment-length 16] [--rejected-per-prompt 1] [--checkpoint-every 4] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_model(cache: Path) -> Path:
    from sgpo.models.tinykit import build_bundled_tiny_model

    out = cache / "tiny-model"
    if not (out / "config.json").exists():
        build_bundled_tiny_model(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", default="dpo", choices=["dpo", "orpo"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--segment-length", type=int, default=16)
    ap.add_argument("--rejected-per-prompt", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--checkpoint-every", type=int, default=4)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument(
        "--model", default=None, help="an SFT checkpoint dir (default: the tiny kit's model)"
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    from sgpo.train.sapo import SAPOConfig, train_sapo

    rows = []
    for line in (REPO / "sgpo/data/bundled/tiny/sft.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        rows.append((msgs[:-1], msgs[-1]["content"]))
    with tempfile.TemporaryDirectory(prefix="sapo-bench-") as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp))
        cfg = SAPOConfig(
            loss=args.loss,
            max_steps=args.steps,
            batch_size=args.batch_size,
            buffers=1,  # one buffer: a step trains on `batch` pairs, as printed
            segment_length=args.segment_length,
            rejected_per_prompt=args.rejected_per_prompt,
            max_length=args.max_length,
            max_prompt_length=args.max_length // 2,
            buffer_capacity=max(64, args.batch_size),
            checkpoint_every=args.checkpoint_every,
            logging_steps=1,
            generation_batch_size=64,
        )
        per_step: list[dict[str, float]] = []
        t0 = time.perf_counter()
        result = train_sapo(
            str(model),
            rows,
            cfg,
            out_dir=Path(tmp) / "policy",
            checkpoint_url=str(Path(tmp) / "ckpt"),
            on_metrics=lambda step, m: per_step.append(m),
        )
        wall = time.perf_counter() - t0

    parts = ("generation", "training", "ema", "checkpoint")
    kept = per_step[args.warmup :] or per_step
    mean = {p: sum(m[f"time/{p}_s"] for m in kept) / len(kept) for p in parts}
    total = sum(mean.values())
    print(
        f"SAPO {args.loss}: {result.steps} steps, batch {args.batch_size}, |B| = {args.segment_length}, "
        f"{args.rejected_per_prompt} rejected/prompt, torch threads {args.torch_threads}; wall {wall:.1f}s "
        f"(model load, trainer set-up and final save included)"
    )
    print(f"per iteration (mean of {len(kept)} after {args.warmup} warm-up):")
    for p in parts:
        print(f"  {p:<11} {mean[p] * 1000:8.1f} ms  {mean[p] / total:6.1%}")
    print(f"  {'total':<11} {total * 1000:8.1f} ms")
    share = mean["generation"] / total
    print(
        f"generation share {share:.1%}: {'under' if share < 0.5 else 'NOT under'} half of the iteration"
    )


if __name__ == "__main__":
    main()
