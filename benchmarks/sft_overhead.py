"""What does the framework cost? Wall time of one `sgpo stage sft` process (= `python -m tasks.sft
CONFIG key=value ... --base URI --data URI`) vs a bare TRL `SFTTrainer` script on the same model,
rows and settings, each a fresh process. Target (issue 20): sgpo / bare <= 1.10x.

    python benchmarks/sft_overhead.py [--model DIR] [--steps 8] [--batch 4] [--max-length 256] \\
        [--config smol] [--threads 1] [--rounds 1]

First, untimed, into a temporary store and MLflow database: `python -m tasks.base_model` (the
checkpoint folder, referenced where it is) and `python -m tasks.prepare --section data.sft` (the
config's SFT data, smol: the bundled tiny SFT file, 167 rows); their printed URIs are the sft
stage's inputs, as a user running one stage alone would give them. The prepared rows are written
as JSONL (prompt conversation, answer) for the bare script. Then, per round, bare and sgpo each as
a fresh process:

  bare   import torch / transformers / trl / datasets, load tokenizer and model (fp32), a
         prompt-completion dataset, SFTTrainer(SFTConfig(...)), train(), save_model + tokenizer
  sgpo   the sft stage alone: stage_main of tasks.sft with the same argv as `python -m tasks.sft`
         (the child only wraps a few sgpo functions with timers): recipe, store check, input
         references, cache key, MLflow run, train_sft, publish (content hash + link or copy into the store)

Same settings on both sides: max_steps, batch (no accumulation), max_length, learning rate 2e-5,
cosine schedule, no warm-up, seed 42, fp32 (TRL's own SFTConfig defaults to bf16 and activation
checkpointing: the bare script turns both off, as sgpo does), completion-only loss through the checkpoint's
chat template, no evaluation, no intermediate saves, logging every step, --threads OpenMP threads
(OMP_NUM_THREADS in both children). The parent times each whole process (time.time() around the
subprocess); the child reports when its Python code started and ended and when trainer.train()
started and ended, so the wall time splits into start-up, before training, training, after
training and exit; sgpo's phases are split further by its own steps. The machine's 1-minute load
average is printed beside each process: on a shared machine it explains most of the spread.
Rounds after the first run the stage with --force (the store already holds its output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.time()  # the child's first line of Python (stdlib imports only above)

REPO = Path(__file__).resolve().parents[1]
LR = 2e-5


def stage_argv(args: argparse.Namespace, tmp: Path) -> list[str]:
    """Recipe and overrides shared by every stage run here (a store and MLflow of our own)."""
    return [
        args.config,
        f"model.name_or_path={args.model}",
        f"store.url={tmp / 'store'}",
        f"tracking.mlflow_uri=sqlite:///{tmp / 'mlflow.db'}",
    ]


def sft_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"sft.max_steps={args.steps}",
        f"sft.per_device_batch_size={args.batch}",
        f"sft.effective_batch_size={args.batch}",
        f"sft.max_length={args.max_length}",
        f"sft.learning_rate={LR}",
        "sft.warmup_ratio=0",
        "sft.lr_scheduler_type=cosine",
        "sft.seed=42",
        "sft.logging_steps=1",
        "sft.bf16=false",
    ]


# ------------------------------------------------------------------------------------ children
def child_bare(args: argparse.Namespace) -> dict:
    t: dict[str, float] = {}
    import dataclasses

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    t["imported"] = time.time()
    rows = [json.loads(ln) for ln in Path(args.rows).read_text().splitlines() if ln.strip()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    t["loaded"] = time.time()
    ds = datasets.Dataset.from_list(
        [
            {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["answer"]}]}
            for r in rows
        ]
    )
    out = Path(args.out)
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    # TRL's SFTConfig defaults to bf16 and activation (gradient) checkpointing: both off, as sgpo sets
    checkpointing = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    cfg = SFTConfig(
        output_dir=str(out.parent / "trainer"),
        num_train_epochs=1,
        bf16=False,
        **{checkpointing: False},
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        seed=42,
        data_seed=42,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=1,
        dataloader_num_workers=0,
        max_length=args.max_length,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer)
    t["train_start"] = time.time()
    result = trainer.train()
    t["train_end"] = time.time()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    t["saved"] = time.time()
    return {"t": t, "loss": result.metrics.get("train_loss")}


def child_sgpo(args: argparse.Namespace, argv: list[str]) -> dict:
    """stage_main(tasks.sft, argv): what `python -m tasks.sft ARGV` runs, with timers around some of
    sgpo's own steps (each wrapper costs microseconds)."""
    t: dict[str, float] = {}
    spent = {"inputs": 0.0, "logger": 0.0, "publish": 0.0, "mlflow_start": 0.0, "mlflow_end": 0.0}
    import sgpo.core.cli as cli
    import sgpo.core.job as job
    import sgpo.core.run as run
    import sgpo.train.trainers as trainers
    from sgpo.core.job import Job
    from tasks.sft import sft

    t["imported"] = time.time()

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.time() - t0

        return wrapper

    cli.input_ref = timed("inputs", cli.input_ref)  # reading / hashing the input references
    # Prefect's run logger or a plain one: the first call imports Prefect to find out
    run.stage_logger = timed("logger", run.stage_logger)
    job.stage_logger = timed("logger", job.stage_logger)
    Job.publish_model = timed("publish", Job.publish_model)  # hash + link or copy into the store
    train_sft, save_trained = trainers.train_sft, trainers._save_trained
    out: dict = {}

    def train_sft_timed(*a, **kw):
        t["train_sft_start"] = time.time()
        m = train_sft(*a, **kw)
        t["train_sft_end"] = time.time()
        out["metrics"] = m
        return m

    def save_timed(*a, **kw):
        t["train_end"] = time.time()  # _save_trained runs right after trainer.train() returns
        save_trained(*a, **kw)
        t["saved"] = time.time()

    trainers.train_sft, trainers._save_trained = train_sft_timed, save_timed
    pipeline_run = cli.pipeline_run

    @contextlib.contextmanager
    def pipeline_run_timed(*a, **kw):
        t0 = time.time()
        with pipeline_run(*a, **kw) as handle:
            spent["mlflow_start"] += time.time() - t0
            yield handle
            t1 = time.time()
        spent["mlflow_end"] += time.time() - t1

    cli.pipeline_run = pipeline_run_timed
    rc = cli.stage_main(sft, argv)
    if rc:
        sys.exit(f"sgpo stage sft exited {rc}")
    t["stage_end"] = time.time()
    m = out["metrics"]
    t["train_start"] = t["train_end"] - m["perf.train_seconds"]
    return {"t": t, "spent": spent, "loss": m.get("train_loss")}


# ------------------------------------------------------------------------------------ parent
def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    """A stage alone; its artifact reference (the JSON on its last line)."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed_child(cmd: list[str], env: dict[str, str]) -> dict:
    load = os.getloadavg()[0]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    t1 = time.time()
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{cmd[3]} failed:\n{out.stderr[-3000:]}")
    res = json.loads(line[-1][7:])
    t = res["t"]
    res.update(
        load=load,
        wall=t1 - t0,
        startup=res["t0"] - t0,
        before=t["train_start"] - res["t0"],
        train=t["train_end"] - t["train_start"],
        after=res["t1"] - t["train_end"],
        exit=t1 - res["t1"],
    )
    return res


def main() -> None:
    # the sgpo child passes the stage's own arguments through (parse_known_args): no abbreviations
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--model", help="checkpoint folder (default: build the tiny kit's model)")
    ap.add_argument(
        "--config", default="smol", help="preset or YAML of the stage runs (its data.sft)"
    )
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both children")
    ap.add_argument("--rounds", type=int, default=1, help="bare and sgpo, interleaved")
    ap.add_argument("--child", choices=["bare", "sgpo"], help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        res = child_bare(args) if args.child == "bare" else child_sgpo(args, rest)
        print("RESULT " + json.dumps({**res, "t0": T_START, "t1": time.time()}), flush=True)
        return
    sys.path.insert(0, str(REPO))
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(
        OMP_NUM_THREADS=str(args.threads),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    with tempfile.TemporaryDirectory(prefix="sgpo-bench-overhead-") as d:
        tmp = Path(d)
        if not args.model:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from ppl import tiny_model

            args.model = tiny_model(tmp / "model")
        args.model = str(Path(args.model).resolve())
        common = stage_argv(args, tmp)
        py = sys.executable
        base = run_json([py, "-m", "tasks.base_model", *common], env)
        data = run_json([py, "-m", "tasks.prepare", *common, "--section", "data.sft"], env)

        from artifacts.store import ArtifactStore, read_ref
        from sgpo.data.sources import conversation

        table = ArtifactStore(str(tmp / "store")).read_table(read_ref(data["uri"])).to_pylist()
        rows = tmp / "rows.jsonl"
        rows.write_text(
            "".join(
                json.dumps({"prompt": conversation(r), "answer": r["reference"]}) + "\n"
                for r in table
            )
        )
        for p in Path(args.model).iterdir():  # the checkpoint in the page cache for both
            if p.is_file():
                p.read_bytes()
        me = [py, __file__, "--child"]
        shape = ["--steps", str(args.steps), "--batch", str(args.batch)]
        shape += ["--max-length", str(args.max_length), "--model", args.model]
        sgpo_cmd = me + ["sgpo", *shape, *common, *sft_overrides(args)]
        sgpo_cmd += ["--base", base["uri"], "--data", data["uri"]]
        runs: dict[str, list[dict]] = {"bare": [], "sgpo": []}
        for r in range(args.rounds):
            out = str(tmp / f"bare-{r}" / "model")
            runs["bare"].append(
                timed_child(me + ["bare", *shape, "--rows", str(rows), "--out", out], env)
            )
            runs["sgpo"].append(timed_child(sgpo_cmd + (["--force"] if r else []), env))
    print(
        f"one SFT process on {Path(args.model).name}: {args.steps} steps of batch {args.batch}, "
        f"max_length {args.max_length}, {len(table)} rows of {args.config}'s data.sft, lr {LR}, fp32, "
        f"{args.threads} OpenMP thread(s)"
    )
    cols = ("startup", "before", "train", "after", "exit")
    print(
        f"{'':>9}{'wall s':>8}  {'start-up':>8}{'before':>8}{'train':>8}{'after':>8}{'exit':>6}"
        f"{'loss':>8}  load"
    )
    for r in range(args.rounds):
        for name in ("bare", "sgpo"):
            x = runs[name][r]
            print(
                f"{name:>4} r{r + 1:<3}{x['wall']:>8.1f}  "
                + "".join(f"{x[c]:>{6 if c == 'exit' else 8}.1f}" for c in cols)
                + f"{x['loss']:>8.3f}  {x['load']:.2f}"
            )
    for r in range(args.rounds):
        b, s = runs["bare"][r], runs["sgpo"][r]
        sp, st, bt = s["spent"], s["t"], b["t"]
        fixed = (s["wall"] - s["train"]) - (b["wall"] - b["train"])
        print(
            f"round {r + 1}: sgpo/bare wall {s['wall'] / b['wall']:.2f}x (target <= 1.10x), "
            f"training alone {s['train'] / b['train']:.2f}x; sgpo - bare = {s['wall'] - b['wall']:+.1f}s, "
            f"of which {fixed:+.1f}s outside training (with bare's training time on both sides: "
            f"{(b['wall'] + fixed) / b['wall']:.2f}x)"
        )
        print(
            f"  before training {s['before'] - b['before']:+.1f}s: sgpo's imports "
            f"{st['imported'] - s['t0']:.1f}s (bare's torch/trl imports {bt['imported'] - b['t0']:.1f}s, "
            f"sgpo's happen inside train_sft), input references {sp['inputs']:.1f}s, MLflow run "
            f"start {sp['mlflow_start']:.1f}s, stage logger (imports Prefect) {sp['logger']:.1f}s, "
            f"train_sft up to train() "
            f"{s['t']['train_start'] - st['train_sft_start']:.1f}s (bare: load + trainer "
            f"{b['t']['train_start'] - bt['imported']:.1f}s)"
        )
        print(
            f"  after training {s['after'] - b['after']:+.1f}s: save {st['saved'] - st['train_end']:.1f}s "
            f"(bare {bt['saved'] - bt['train_end']:.1f}s), publish (hash + link) "
            f"{sp['publish']:.1f}s, MLflow run end {sp['mlflow_end']:.1f}s; exit "
            f"{s['exit'] - b['exit']:+.1f}s"
        )
    if args.rounds > 1:
        ratios = sorted(s["wall"] / b["wall"] for b, s in zip(runs["bare"], runs["sgpo"]))
        print(f"sgpo/bare over {args.rounds} rounds: {ratios[0]:.2f}x to {ratios[-1]:.2f}x")


if __name__ == "__main__":
    main()
