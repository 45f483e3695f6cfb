"""How many times is the checkpoint loaded, and how fast does it generate, in an `eval-sapo` evaluation?

Runs the `eval-sapo` preset shrunk to the tiny model (AlpacaEval 2.0 on the bundled tiny set, MT-Bench on
a few questions, lm-eval on a local multiple-choice task and IFEval from a local file, `limit`ed) through
the real evaluation flow, with a local scripted judge (no API). Prints, per stage, the model loads
(`from_pretrained` calls of the evaluated checkpoint) and the generation tokens/s; the baseline is one
load per benchmark (the issue's bound), so `loads / benchmarks` <= 1.0 is the target.

    python benchmarks/evaluate.py [--mt-questions 4] [--alpaca-rows 8] [--limit 4] [--max-new-tokens 32] [--no-compare]

By default it runs twice, into two stores: first with the flow's shared generator switched off (one load
per stage, as before), then as the flow runs (one loaded generator for the checkpoint), and prints both
load counts and whether the generate stages' and lm-eval's artifacts are byte-identical.

Needs ../shared/data (or SGPO_SHARED_DATA) for the MT-Bench questions and the IFEval file; without it
MT-Bench uses two built-in questions and lm-eval runs the local task only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class Judge:
    """Both judges in one: AlpacaEval's one-token m/M with logprobs, MT-Bench's [[rating]]."""

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        from sgpo.llm.server import ChatResult

        if top_logprobs:
            from sgpo.llm.rule_judge import judge_answer

            return judge_answer(0.6, top_logprobs=top_logprobs, prompt_tokens=10)
        return ChatResult(
            text="Rating: [[5]]", finish_reason="stop", prompt_tokens=10, completion_tokens=4
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mt-questions", type=int, default=4)
    ap.add_argument("--alpaca-rows", type=int, default=8)
    ap.add_argument("--limit", type=int, default=4, help="documents per lm-eval task")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run with one load per stage (the shared generator off) and print both",
    )
    args = ap.parse_args()

    import transformers

    from flows.evaluate import evaluate
    from sgpo.config import load_evaluation_config
    from sgpo.data.shared import shared_data_dir
    from sgpo.llm.server import build_app, running_server
    from sgpo.models.tinykit import build_bundled_tiny_model

    work = Path(tempfile.mkdtemp(prefix="sgpo-bench-eval-"))
    model_dir = work / "tiny"
    build_bundled_tiny_model(model_dir)
    data = shared_data_dir()
    mtq = work / "mt_questions.jsonl"
    if (data / "mt_bench" / "question.jsonl").is_file():
        lines = (data / "mt_bench" / "question.jsonl").read_text().splitlines()[: args.mt_questions]
        refs = str(data / "mt_bench" / "reference_answer_gpt-4.jsonl")
    else:
        lines = [
            json.dumps(
                {"question_id": i, "category": "writing", "turns": [f"Write line {i}.", "Shorter."]}
            )
            for i in (1, 2)
        ]
        refs = None
    mtq.write_text("\n".join(lines) + "\n")
    tasks_dir = work / "lm_tasks"
    tasks_dir.mkdir()
    docs = [{"q": f"Item {i} is", "choices": ["red", "blue"], "gold": i % 2} for i in range(8)]
    (tasks_dir / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks_dir / "bench_mc.yaml").write_text(
        f"task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks_dir / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: gold\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n"
    )
    lm_tasks = [{"name": "bench_mc", "num_fewshot": 0, "metric": "acc"}]
    if (data / "ifeval" / "input_data.jsonl").is_file():
        lm_tasks.append(
            {
                "name": "ifeval",
                "metric": "prompt_level_strict_acc",
                "dataset_path": "json",
                "data_files": {"train": str(data / "ifeval" / "input_data.jsonl")},
            }
        )

    real = transformers.AutoModelForCausalLM.from_pretrained.__func__
    sampling = {"max_new_tokens": args.max_new_tokens, "batch_size": 8, "backend": "transformers"}

    def run(mode: str):
        """The flow into its own store: `shared` as it runs (one loaded generator for the checkpoint), or
        `per_stage` (sgpo.generate.shared_generators off: each stage loads the model, as before)."""
        import contextlib

        import flows.evaluate as fe

        loads: Counter[str] = Counter()

        def counting(cls, path, *a, **k):
            if Path(str(path)).name == "model" or str(path) == str(model_dir):
                stage = next(
                    (f.f_code.co_filename for f in _frames() if "/tasks/" in f.f_code.co_filename),
                    "?",
                )
                loads[Path(stage).stem] += 1
            return real(cls, path, *a, **k)

        transformers.AutoModelForCausalLM.from_pretrained = classmethod(counting)
        shared = fe.shared_generators
        if mode == "per_stage":
            fe.shared_generators = contextlib.nullcontext
        try:
            with running_server(build_app(Judge(), model_name="scripted-judge")) as url:
                endpoint = {"base_url": url, "model": "scripted-judge", "max_concurrency": 8}
                cfg = load_evaluation_config(
                    "eval-sapo",
                    [
                        f"model={model_dir}",
                        "model.name=tiny",
                        f"store.url={work / mode / 'store'}",
                        f"tracking.mlflow_uri=sqlite:///{work}/mlflow-{mode}.db",
                    ],
                )
                cfg = cfg.model_validate(
                    {
                        **cfg.model_dump(),
                        "alpaca_eval": {
                            **cfg.alpaca_eval.model_dump(),
                            "data": {"path": "bundled:tiny/eval.jsonl", "split": "eval"},
                            "max_rows": args.alpaca_rows,
                            "sampling": sampling,
                            "endpoint": endpoint,
                            "top_logprobs": 5,
                            "instruction_difficulty": "none",
                            "gamed_annotations": "none",
                        },
                        "mt_bench": {
                            **cfg.mt_bench.model_dump(),
                            "questions": str(mtq),
                            "reference_answers": refs,
                            "sampling": sampling,
                            "endpoint": endpoint,
                        },
                        "lm_eval": {
                            **cfg.lm_eval.model_dump(),
                            "backend": "hf",
                            "tasks": lm_tasks,
                            "include_paths": [str(tasks_dir)],
                            "limit": args.limit,
                            "max_gen_toks": args.max_new_tokens,
                            "batch_size": 8,
                        },
                    }
                )
                t0 = time.perf_counter()
                report = evaluate(config=cfg)
                return report, loads, time.perf_counter() - t0
        finally:
            transformers.AutoModelForCausalLM.from_pretrained = classmethod(real)
            fe.shared_generators = shared

    runs = {mode: run(mode) for mode in (("per_stage", "shared") if args.compare else ("shared",))}
    report, loads, wall = runs["shared"]

    import pyarrow.parquet as pq

    def table(uri):
        return pq.read_table(Path(uri.removeprefix("file://")) / "data.parquet").to_pylist()

    by_stage = {r.stage: r for r in report.stages}
    print(f"eval-sapo shrunk to the tiny model: {wall:.1f}s wall, {len(report.stages)} stages")
    print(f"{'stage':<24}{'loads':>6}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}")
    for name in ("alpaca_eval_generate", "mt_bench_generate", "lm_eval"):
        st = by_stage.get(name)
        if st is None:
            continue
        tokens, rate = None, None
        if name == "alpaca_eval_generate":
            tokens = sum(r["completion_tokens"] for r in table(st.uri))
            rate = tokens / st.seconds if st.seconds else None
        elif name == "mt_bench_generate":
            s = (report.mt_bench or {}).get("decoding") and table(st.uri)
            tokens = sum(sum(r["completion_tokens"]) for r in s)
            rate = tokens / st.seconds if st.seconds else None
        print(
            f"{name:<24}{loads.get(name, 0):>6}{st.seconds:>9.1f}{tokens if tokens is not None else '-':>8}"
            f"{(f'{rate:.1f}' if rate else '-'):>10}"
        )
    benchmarks = 3
    print(
        f"model loads: {sum(loads.values())} for {benchmarks} benchmarks with generation (ratio "
        f"{sum(loads.values()) / benchmarks:.2f} to one load per benchmark); by stage {dict(loads)}"
    )
    if "per_stage" in runs:
        before, before_loads, before_wall = runs["per_stage"]
        names = ("alpaca_eval_generate", "mt_bench_generate", "lm_eval")
        hashes = [
            {s.stage: s.content_hash for s in r.stages if s.stage in names}
            for r in (before, report)
        ]
        same = hashes[0] == hashes[1]
        print(
            f"before (one load per stage): {sum(before_loads.values())} loads {dict(before_loads)}, {before_wall:.1f}s wall; "
            f"after (shared generator): {sum(loads.values())} loads, {wall:.1f}s wall; "
            f"generate + lm_eval artifacts byte-identical: {same}"
        )
    e = report.lm_eval or {}
    print(
        f"lm-eval: model load {e.get('model_load_seconds')}s, tasks {e.get('run_seconds')}s, headline {e.get('headline')}"
    )
    return 0


def _frames():
    f = sys._getframe(1)
    while f is not None:
        yield f
        f = f.f_back


if __name__ == "__main__":
    raise SystemExit(main())
