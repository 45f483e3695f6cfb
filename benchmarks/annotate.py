"""Does the durable LLM client keep `max_concurrency` requests in flight? Throughput of
`sgpo.llm.client.call_all` (journal writes included) against a local OpenAI-compatible server
whose fake model answers instantly after an injected latency, for a few concurrency values.

Printed per concurrency c: requests/s, as a ratio to the bound c / latency (what a perfect
client achieves) and to the sequential client (c = 1). The server runs in its own process so
that the client's and the server's Python do not share one GIL.

Then the cost per 1000 calls in sync mode and in Batch API mode (`endpoint.mode = "batch"`,
priced with the endpoint's `batch_discount`, OpenAI's half price by default), from the billed
tokens of the same requests, at `--prompt-price` / `--completion-price` USD per 1M tokens.

    python benchmarks/annotate.py [--latency 0.1] [--requests 256] [--concurrency 1 4 16 64]
                                  [--prompt-price 10] [--completion-price 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SERVER = r"""
import sys, threading
sys.path[:0] = [{repo!r}]
from tests.helpers.llm import EchoBackend
from sgpo.llm.server import FaultConfig, build_app, running_server
app = build_app(EchoBackend(), model_name="fake", faults=FaultConfig(latency_s=float(sys.argv[1])))
with running_server(app) as url:
    print(url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--latency", type=float, default=0.1, help="injected server latency per request, seconds"
    )
    ap.add_argument("--requests", type=int, default=256, help="requests per measurement")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument(
        "--prompt-price",
        type=float,
        default=10.0,
        help="USD per 1M prompt tokens (GPT-4 Turbo: 10)",
    )
    ap.add_argument(
        "--completion-price",
        type=float,
        default=30.0,
        help="USD per 1M completion tokens (GPT-4 Turbo: 30)",
    )
    args = ap.parse_args()

    sys.path[:0] = [str(REPO)]
    from sgpo.llm.client import EndpointConfig, call_all
    from tests.helpers.llm import make_requests

    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER.format(repo=str(REPO)),
            str(args.latency),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        url = server.stdout.readline().strip()
        if not url:
            sys.exit("the benchmark server did not start")
        results = []
        with tempfile.TemporaryDirectory(prefix="sgpo-bench-annotate-") as d:
            for c in sorted(set(args.concurrency)):
                n = (
                    max(args.requests, 4 * c) if c > 1 else min(args.requests, 64)
                )  # sequential: fewer, it is slow
                ep = EndpointConfig(
                    base_url=url,
                    model="fake",
                    api_key_env="SGPO_BENCH_NO_KEY",
                    max_concurrency=c,
                    timeout_s=30,
                )
                reqs = make_requests(n, prefix=f"bench-c{c}")
                t0 = time.perf_counter()
                s = call_all(reqs, ep, journal_url=f"{d}/c{c}.jsonl", namespace="bench")
                wall = time.perf_counter() - t0
                assert s.n_ok == n, s
                results.append((c, n, wall, n / wall))
            costs = {}
            for mode in ("sync", "batch"):
                ep = EndpointConfig(
                    base_url=url,
                    model="fake",
                    api_key_env="SGPO_BENCH_NO_KEY",
                    timeout_s=30,
                    max_concurrency=max(args.concurrency),
                    mode=mode,
                    batch_poll_s=0.05,
                    price_per_1m_prompt_tokens=args.prompt_price,
                    price_per_1m_completion_tokens=args.completion_price,
                )
                reqs = make_requests(
                    args.requests, prefix="bench-cost"
                )  # the same calls in both modes
                t0 = time.perf_counter()
                s = call_all(reqs, ep, journal_url=f"{d}/cost-{mode}.jsonl", namespace="bench-cost")
                assert s.n_ok == args.requests, s
                costs[mode] = (
                    s.cost_usd * 1000 / args.requests,
                    time.perf_counter() - t0,
                    ep.batch_discount,
                )
    finally:
        server.stdin.close()
        server.wait(timeout=30)

    seq = next((r[3] for r in results if r[0] == 1), None)
    print(
        f"call_all throughput, server latency {args.latency * 1000:.0f} ms, fake model, local journal"
    )
    print(
        f"{'concurrency':>11} {'requests':>8} {'wall s':>7} {'req/s':>8} {'/ bound c/latency':>18} {'/ sequential':>12}"
    )
    for c, n, wall, rps in results:
        bound = c / args.latency
        vs_seq = f"{rps / seq:12.2f}" if seq else f"{'n/a':>12}"
        print(f"{c:>11} {n:>8} {wall:>7.2f} {rps:>8.1f} {rps / bound:>18.3f} {vs_seq}")
    print(
        f"\ncost per 1000 calls, ${args.prompt_price:g} / ${args.completion_price:g} per 1M prompt / completion "
        f"tokens, {args.requests} calls of the fake model"
    )
    print(f"{'mode':>6} {'USD / 1000 calls':>17} {'/ sync':>7} {'wall s':>7}")
    for mode, (per_1000, wall, discount) in costs.items():
        note = f"  (batch_discount {discount:g})" if mode == "batch" else ""
        print(f"{mode:>6} {per_1000:>17.4f} {per_1000 / costs['sync'][0]:>7.2f} {wall:>7.2f}{note}")


if __name__ == "__main__":
    main()
