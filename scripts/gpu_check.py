"""The GPU check behind scripts/gpu_check.sh: one line per check with its figure, each check skipping
with a reason when its package is absent; no Prefect, no store, no MLflow (sgpo.train.trainers directly).

    python scripts/gpu_check.py [--dry-run] [--steps 20] [--model tiny|smol]

Checks: env (torch, CUDA, device), bf16_sft (full SFT in bf16), zero3 (a 1-GPU DeepSpeed ZeRO-3
launch through `accelerate launch --config_file configs/accelerate/zero3.yaml`), lora (LoRA SFT),
qlora (LoRA on a 4-bit NF4 base, bitsandbytes, CUDA only), dpo_cached (DPO with cached reference log-probs), vllm (sampling with vllm.LLM when present).
--dry-run (CPU): every step it would take, checked: the imports each check needs (absent -> the
skip it would print), the accelerate configs, the launch command; the training checks run 1 step
in fp32 on the CPU; vllm only its import. Exit status 1 if a check FAILED (a skip is not a failure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NEEDS = {
    "bf16_sft": ["torch", "transformers", "pydantic", "yaml", "datasets", "trl", "tokenizers"],
    "lora": ["peft"],
    "qlora": ["peft", "bitsandbytes"],
    "dpo_cached": [],
    "zero3": ["deepspeed"],
    "vllm": ["vllm"],
}
RESULTS: list[tuple[str, str]] = []


def line(name: str, status: str, text: str) -> None:
    RESULTS.append((name, status))
    print(f"[gpu_check] {name:<11} {status:<5} {text}", flush=True)


def missing(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def smol_model(folder: Path) -> str:
    """SmolLM2-135M-Instruct (the `smol` preset's model, a real Llama architecture with ChatML):
    the packaged GGUF converted as the base_model stage converts it (sgpo.models.gguf)."""
    from sgpo.models.gguf import convert_gguf
    from sgpo.models.source import packaged_model_file

    _, gguf = packaged_model_file("SmolLM2-135M-Instruct")  # one line with the install command
    return str(convert_gguf(gguf, folder))


def tiny_model(folder: Path, big: bool) -> str:
    from sgpo.config import TinyModelConfig
    from sgpo.models.tinykit import build_bundled_tiny_model

    # on a GPU a model big enough for the figures to mean something (~50M parameters); on CPU the tiny one
    tc = (
        TinyModelConfig(
            hidden_size=512,
            num_attention_heads=8,
            num_hidden_layers=8,
            intermediate_size=2048,
            vocab_size=4096,
        )
        if big
        else TinyModelConfig()
    )
    build_bundled_tiny_model(folder, tc)
    return str(folder)


def examples(n: int = 64) -> list:
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


def train(kind: str, model: str, steps: int, gpu: bool) -> dict:
    """One training run; returns the perf metrics (sgpo.train.throughput)."""
    from sgpo.config import DPOStageConfig, LoRAConfig, SFTStageConfig
    from sgpo.train.reference import reference_logps
    from sgpo.train.trainers import train_dpo, train_sft

    common = dict(
        max_steps=steps,
        per_device_batch_size=8,
        effective_batch_size=8,
        max_length=512,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        bf16=gpu,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "dpo_cached":
            cfg = DPOStageConfig(**common)
            pairs = [(p, c, c[::-1][: max(8, len(c) // 2)]) for p, c in examples()]
            t0 = time.perf_counter()
            ref = reference_logps(
                model, pairs, max_length=cfg.max_length, batch_size=16, bf16=cfg.bf16
            )
            m = train_dpo(model, pairs, cfg, Path(tmp) / "out", tracker=None, ref_logps=ref)
            m["logps_s"] = time.perf_counter() - t0 - m["perf.train_seconds"]
        else:
            lora = {
                "lora": LoRAConfig(r=16),
                "qlora": LoRAConfig(r=16, quantization="4bit"),
            }.get(kind)
            cfg = SFTStageConfig(**common, lora=lora)
            m = train_sft(model, examples(), cfg, Path(tmp) / "out", tracker=None)
    return m


def figure(m: dict, steps: int) -> str:
    mem = (
        f"peak GPU {m['perf.peak_gpu_mem_gb']:.2f} GiB"
        if "perf.peak_gpu_mem_gb" in m
        else f"peak RSS {m['perf.peak_rss_gb']:.2f} GiB"
    )
    mfu = f", MFU {m['perf.mfu'] * 100:.1f}%" if "perf.mfu" in m else ""
    return (
        f"{m['perf.tokens_per_s']:.0f} tokens/s, {m['perf.samples_per_s']:.1f} samples/s, "
        f"step {m['perf.train_seconds'] / steps * 1000:.0f} ms, {mem}{mfu}"
    )


def run_check(name: str, fn, *needs: str) -> None:
    absent = missing(list(needs))
    if absent:
        line(name, "SKIP", f"{', '.join(absent)} not installed")
        return
    try:
        fn()
    except Exception as e:  # one failed check does not stop the others
        line(name, "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc(file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--model",
        choices=("tiny", "smol"),
        default="tiny",
        help="tiny: the tiny kit's model (~50M on a GPU); smol: SmolLM2-135M-Instruct, a real "
        "architecture (the smol preset's; needs scripts/setup.sh test,smollm2 or its wheel in .whl/)",
    )
    ap.add_argument("--_train", default=None, help=argparse.SUPPRESS)  # a launched child (zero3)
    ap.add_argument("--_model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._train:  # inside accelerate launch: train, print the metrics
        m = train(args._train, args._model, args.steps, gpu=not args.dry_run)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(m))
        return 0

    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    steps = 1 if args.dry_run else args.steps
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    line(
        "env",
        "OK",
        f"python {sys.version.split()[0]}, torch {torch.__version__}, {dev}"
        + (" (dry run: CPU, 1 step, fp32)" if args.dry_run else ""),
    )
    if not gpu and not args.dry_run:
        line("gpu", "FAIL", "no CUDA device: run with --dry-run on a CPU machine")
        return 1
    base_needs = NEEDS["bf16_sft"]
    absent = missing(base_needs)
    with tempfile.TemporaryDirectory() as tmp:
        model = None
        if not absent and args.model == "smol":
            try:
                model = smol_model(Path(tmp) / "model")
                line("model", "OK", f"SmolLM2-135M-Instruct converted from its GGUF at {model}")
            except Exception as e:  # noqa: BLE001 - not installed: the install command, then stop
                line("model", "FAIL", f"{type(e).__name__}: {e}")
                return 1
        elif not absent:
            model = tiny_model(Path(tmp) / "model", big=gpu)
            line("model", "OK", f"tiny kit model at {model}")

        def bf16():
            m = train("sft", model, steps, gpu)
            line("bf16_sft", "OK", figure(m, steps))

        def lora():
            m = train("lora", model, steps, gpu)
            line("lora", "OK", figure(m, steps))

        def qlora():
            if not gpu:
                line(
                    "qlora",
                    "SKIP",
                    "QLoRA (bitsandbytes 4-bit) needs CUDA (dry run: config checked)",
                )
                return
            m = train("qlora", model, steps, gpu)
            line("qlora", "OK", figure(m, steps))

        def dpo():
            m = train("dpo_cached", model, steps, gpu)
            line(
                "dpo_cached",
                "OK",
                figure(m, steps) + f", reference log-prob pass {m['logps_s']:.2f}s (once)",
            )

        def zero3():
            from sgpo.train.launch import (
                free_port,
                read_accelerate_config,
                resolve_accelerate_config,
            )

            path = resolve_accelerate_config("zero3")
            tree = read_accelerate_config(path)
            assert (
                tree["distributed_type"] == "DEEPSPEED"
                and tree["deepspeed_config"]["zero_stage"] == 3
            )
            cmd = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(path),
                "--num_processes",
                "1",
                "--num_machines",
                "1",
                "--main_process_port",
                str(free_port()),
                str(Path(__file__).resolve()),
                "--_train",
                "sft",
                "--_model",
                str(model),
                "--steps",
                str(steps),
            ]
            if args.dry_run:
                if importlib.util.find_spec("deepspeed") is None:
                    line(
                        "zero3",
                        "SKIP",
                        f"deepspeed not installed (would run: {' '.join(cmd[1:5])} ... --_train sft)",
                    )
                    return
                if not torch.cuda.is_available():
                    line(
                        "zero3",
                        "SKIP",
                        f"DeepSpeed ZeRO-3 needs CUDA; config {path.name} and launch command checked",
                    )
                    return
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=str(REPO),
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            res = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not res:
                raise RuntimeError(f"launch exited {out.returncode}: {out.stderr.strip()[-600:]}")
            line("zero3", "OK", "1 GPU, ZeRO-3: " + figure(json.loads(res[-1][7:]), steps))

        def vllm():
            if args.dry_run:
                line("vllm", "SKIP", "vllm present; vLLM needs CUDA (dry run: import checked only)")
                return
            from vllm import LLM, SamplingParams

            llm = LLM(
                model=str(model), dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=512
            )
            prompts = [p[0]["content"] for p, _ in examples(64)]
            t0 = time.perf_counter()
            outs = llm.generate(
                prompts, SamplingParams(temperature=0.7, top_p=0.9, max_tokens=128, ignore_eos=True)
            )
            dt = time.perf_counter() - t0
            toks = sum(len(o.outputs[0].token_ids) for o in outs)
            line(
                "vllm",
                "OK",
                f"{toks / dt:.0f} generated tokens/s ({len(prompts)} prompts x 128 tokens, {dt:.2f}s)",
            )

        if absent:
            for name in ("bf16_sft", "lora", "qlora", "dpo_cached", "zero3", "vllm"):
                line(
                    name,
                    "SKIP",
                    f"{', '.join(absent)} not installed (the training glue needs them)",
                )
        else:
            run_check("bf16_sft", bf16)
            run_check("lora", lora, *NEEDS["lora"])
            run_check("qlora", qlora, *NEEDS["qlora"])
            run_check("dpo_cached", dpo)
            if args.dry_run and importlib.util.find_spec("deepspeed") is None:
                zero3()  # checks the config and the command, then says why it skips
            else:
                run_check("zero3", zero3, *NEEDS["zero3"])
            run_check("vllm", vllm, *NEEDS["vllm"])
    failed = [n for n, s in RESULTS if s == "FAIL"]
    print(
        f"[gpu_check] done: {sum(s == 'OK' for _, s in RESULTS)} ok, {sum(s == 'SKIP' for _, s in RESULTS)} skipped, "
        f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
