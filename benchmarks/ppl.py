"""Is perplexity scoring (the ppl_filter stage) batched well? Time of `response_perplexities` in
length-sorted batches vs one sequence per forward pass, same model and candidates.

    python benchmarks/ppl.py [--model DIR] [--n 96] [--batch-size 16] [--max-length 768]

Without --model the tiny kit's model is built in a temporary folder; candidates are the bundled
tiny SFT answers under their prompts (model loading included in both timings). Each setting runs once after a warm-up; the perplexities
of the two settings are checked to agree (max relative difference printed), and the machine's 1-minute
load average when timing started. Target: >= 3x on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_model(folder: Path) -> str:
    from sgpo.models.tinykit import build_bundled_tiny_model

    build_bundled_tiny_model(folder)
    return str(folder)


def main() -> None:
    import json

    import torch

    from sgpo.data.sources import BUNDLED_DIR
    from tasks.ppl_filter import response_perplexities

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=768)
    ap.add_argument("--torch-threads", type=int, default=None)
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    rows = [
        json.loads(line)
        for line in (BUNDLED_DIR / "tiny" / "sft.jsonl").read_text().splitlines()
        if line.strip()
    ]
    rows = (rows * (args.n // max(len(rows), 1) + 1))[: args.n]
    prompts = [r["prompt"] for r in rows]
    responses = [
        next(m["content"] for m in r["messages"] if m["role"] == "assistant") for r in rows
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "model")
        kw = dict(max_length=args.max_length)
        response_perplexities(model, prompts[:4], responses[:4], batch_size=4, **kw)  # warm-up
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        single = response_perplexities(model, prompts, responses, batch_size=1, **kw)
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = response_perplexities(model, prompts, responses, batch_size=args.batch_size, **kw)
        t_batched = time.perf_counter() - t0
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(single, batched))
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"ppl of {args.n} responses on {device}: per-sample {t_single:.2f}s, batched x{args.batch_size} "
        f"length-sorted {t_batched:.2f}s -> {t_single / t_batched:.1f}x faster; max relative difference {rel:.1e} "
        f"(load {load:.2f})"
    )


if __name__ == "__main__":
    main()
