"""Which generation back-end samples fastest? Completion tokens per second of each available
back-end on the same checkpoint and workload, as a ratio to transformers (in-process HF generate).

Back-ends measured (each after a warm-up call; start-up time reported separately):
  transformers   sgpo.generate.hf, batched generate (sampling.batch_size prompts per call)
  openai         OpenAIServerGenerator over our own sgpo.llm.server (transformers behind HTTP,
                 one request at a time: the stand-in server serialises generation)
  vllm_server    vLLM's OpenAI server, driven with bounded concurrency
  vllm           in-process vllm.LLM (VLLMGenerator)
The vLLM rows use this interpreter's vllm when it has one (a GPU worker), else .venv-vllm
(scripts/setup_vllm_cpu.sh; the in-process row then runs inside that venv), else are skipped.

    python benchmarks/sampling.py [--model DIR] [--prompts 32] [--n 2] [--max-new-tokens 64]

Without --model the tiny kit's model is built in a temporary folder. Without CUDA the vLLM rows
use float32, --enforce-eager and a 1 GiB KV cache; with CUDA, vLLM's defaults. Sampling settings
are the paper's (temperature 0.7, top-p 0.9); a random tiny model rarely stops early, so most
answers run to max-new-tokens. Each row ends with the machine's 1-minute load average when that
back-end's start-up began.
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
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_CPU = dict(
    vllm_dtype="float32",
    vllm_enforce_eager=True,
    vllm_max_model_len=512,
    vllm_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
)

# Run inside .venv-vllm: load, warm up, time one generate, print one JSON line.
VLLM_INPROCESS = r"""
import json, sys, time

def main():
    from sgpo.config import SamplingConfig
    from sgpo.generate.vllm import VLLMGenerator
    model, params, convs = sys.argv[1], SamplingConfig.model_validate_json(sys.argv[2]), json.loads(sys.argv[3])
    t0 = time.perf_counter()
    gen = VLLMGenerator(model, params=params)
    startup = time.perf_counter() - t0
    gen.generate(convs[:2], params.model_copy(update={"max_new_tokens": 8}))
    t0 = time.perf_counter()
    out = gen.generate(convs, params)
    wall = time.perf_counter() - t0
    gen.close()
    print("RESULT " + json.dumps({"startup": startup, "wall": wall,
                                  "tokens": sum(g.completion_tokens for gs in out for g in gs)}), flush=True)

if __name__ == "__main__":
    main()
"""


def conversations(n: int) -> list[list[dict[str, str]]]:
    topics = [
        "the sea",
        "a cat",
        "rain",
        "mountains",
        "a city at night",
        "bread",
        "friendship",
        "the moon",
    ]
    return [
        [
            {
                "role": "user",
                "content": f"Write a short paragraph about {topics[i % len(topics)]} (#{i}).",
            }
        ]
        for i in range(n)
    ]


def timed(gen, convs, params) -> tuple[float, int]:
    gen.generate(convs[:2], params.model_copy(update={"max_new_tokens": 8}))  # warm-up
    t0 = time.perf_counter()
    out = gen.generate(convs, params)
    wall = time.perf_counter() - t0
    return wall, sum(g.completion_tokens for gs in out for g in gs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint dir (default: build the tiny kit's model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--batch-size", type=int, default=16, help="transformers: prompts per generate() call"
    )
    ap.add_argument(
        "--concurrency", type=int, default=16, help="server back-ends: requests in flight"
    )
    ap.add_argument("--skip", nargs="*", default=[], help="back-ends to leave out")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads for the transformers and openai rows (default: torch's choice)",
    )
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))

    from sgpo.config import SamplingConfig
    from sgpo.generate import open_generator

    tmp = tempfile.TemporaryDirectory(prefix="sgpo-bench-sampling-")
    model = args.model
    if model is None:
        from sgpo.models.tinykit import build_bundled_tiny_model

        model = str(build_bundled_tiny_model(Path(tmp.name) / "tiny"))
    convs = conversations(args.prompts)
    common = dict(n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9, seed=0)
    rows: list[tuple[str, float, float, int]] = []  # name, startup s, wall s, tokens
    loads: dict[str, float] = {}  # name -> 1-minute load average when its start-up began

    def run(name: str, params: SamplingConfig, context=None) -> None:
        loads.setdefault(name, os.getloadavg()[0])
        t0 = time.perf_counter()
        gen = open_generator(model, params)
        startup = time.perf_counter() - t0
        try:
            wall, tokens = timed(gen, convs, params)
        finally:
            gen.close()
        rows.append((name, startup, wall, tokens))
        print(f"  {name}: {tokens} tokens in {wall:.2f} s", file=sys.stderr, flush=True)

    if "transformers" not in args.skip:
        run(
            "transformers",
            SamplingConfig(backend="transformers", batch_size=args.batch_size, **common),
        )
    if "openai" not in args.skip:
        from sgpo.llm.server import TransformersChatBackend, build_app, running_server

        loads["openai"] = os.getloadavg()[0]
        t0 = time.perf_counter()
        app = build_app(TransformersChatBackend(model), model_name="bench")
        with running_server(app) as url:
            load = time.perf_counter() - t0
            run(
                "openai",
                SamplingConfig(
                    backend="openai",
                    base_url=url,
                    served_model_name="bench",
                    max_concurrency=args.concurrency,
                    **common,
                ),
            )
            name, startup, wall, tokens = rows[-1]
            rows[-1] = (name, startup + load, wall, tokens)
    # vLLM: importable here (a GPU worker) or from .venv-vllm (CPU, scripts/setup_vllm_cpu.sh)
    import importlib.util

    import torch

    local_vllm = importlib.util.find_spec("vllm") is not None
    vllm_python = (
        sys.executable if local_vllm else (str(VLLM_PYTHON) if VLLM_PYTHON.exists() else None)
    )
    engine = {} if torch.cuda.is_available() else VLLM_CPU
    have_vllm = vllm_python is not None
    if have_vllm and "vllm_server" not in args.skip:
        run(
            "vllm_server",
            SamplingConfig(
                backend="vllm_server",
                vllm_python=vllm_python,
                max_concurrency=args.concurrency,
                **engine,
                **common,
            ),
        )
    if local_vllm and "vllm" not in args.skip:
        run("vllm", SamplingConfig(backend="vllm", **engine, **common))
    elif have_vllm and "vllm" not in args.skip:
        loads["vllm"] = os.getloadavg()[0]
        params = SamplingConfig(backend="vllm", **VLLM_CPU, **common)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
        with tempfile.TemporaryDirectory() as d:
            script = Path(d) / "child.py"
            script.write_text(VLLM_INPROCESS)
            r = subprocess.run(
                [str(VLLM_PYTHON), str(script), model, params.model_dump_json(), json.dumps(convs)],
                capture_output=True,
                text=True,
                env=env,
                cwd=d,
            )
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"in-process vLLM failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        else:
            res = json.loads(line.removeprefix("RESULT "))
            rows.append(("vllm", res["startup"], res["wall"], res["tokens"]))
    if not have_vllm:
        print(
            f"(vLLM rows skipped: vllm is not importable and {VLLM_PYTHON} is absent; "
            "scripts/setup_vllm_cpu.sh creates it)"
        )

    base = next((tokens / wall for name, _, wall, tokens in rows if name == "transformers"), None)
    print(
        f"sampling throughput: {args.prompts} prompts x n={args.n}, max_new_tokens={args.max_new_tokens}, "
        f"temperature 0.7, top-p 0.9; model {Path(model).name}"
    )
    print(
        f"{'back-end':>13} {'start-up s':>10} {'wall s':>7} {'tokens':>7} {'tokens/s':>9} {'/ transformers':>14}"
        "  load"
    )
    for name, startup, wall, tokens in rows:
        tps = tokens / wall
        ratio = f"{tps / base:14.2f}" if base else f"{'n/a':>14}"
        print(
            f"{name:>13} {startup:>10.1f} {wall:>7.2f} {tokens:>7} {tps:>9.1f} {ratio}  {loads[name]:.2f}"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
