"""Evaluation stage `lm_eval`: lm-evaluation-harness tasks (Open LLM Leaderboard, IFEval, ...) on the policy.

The scorers are lm-eval's (EleutherAI/lm-evaluation-harness), not rewritten: this stage checks the
task names against lm-eval's index before any model is loaded, loads the checkpoint once (HF
back-end: lm-eval's `HFLM` around our model and tokenizer; `backend: vllm` uses lm-eval's vLLM
model) and runs every configured task on it with its few-shot setting (default: the Open LLM
Leaderboard v1: ARC-Challenge 25-shot acc_norm, HellaSwag 10-shot acc_norm, MMLU 5-shot acc,
TruthfulQA-MC2 0-shot, Winogrande 5-shot acc, GSM8K 5-shot exact match). Tasks named in
`chat_template_tasks` (IFEval) are prompted through the model's chat template, the others as plain
few-shot prompts, as the leaderboard does. A task may read a local file instead of the hub
(`dataset_path: json`, `data_files`), e.g. IFEval's input_data.jsonl.

IFEval's NLTK data: `sgpo.evals.lm_harness.ensure_punkt_tab()` (no download at run time).

Output: one row per (task, metric, filter) with value, stderr, few-shot count, task version and
whether the chat template was used; `samples.parquet` beside it (one row per document: doc,
prompt arguments, responses, per-sample metrics, JSON text); `report.json`.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from artifacts.hashing import sha256_bytes
from artifacts.refs import ArtifactRef
from sgpo.config import LmEvalConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import resolve_data_path

BENCHMARK = "lm_eval"


def files_fingerprint(cfg: LmEvalConfig) -> dict[str, str]:
    """Local task data and task definitions by content (a hub dataset is named by the task's version)."""
    out = {}
    for t in cfg.tasks:
        for split, f in sorted((t.data_files or {}).items()):
            p = resolve_data_path(
                f
            )  # shared:NAME, bundled:NAME or a path; a missing shared file fails here
            if p.is_file():
                out[f"{t.name}.{split}"] = sha256_bytes(p.read_bytes())
    for folder in cfg.include_paths:
        for p in sorted(Path(folder).expanduser().rglob("*")):
            if p.is_file() and p.suffix in (".yaml", ".yml", ".py", ".jsonl", ".json"):
                out[f"include:{p.name}"] = sha256_bytes(p.read_bytes())
    return out


@stage(
    "lm_eval",
    section="lm_eval",
    recipe="evaluation",
    code_version="2",  # 2: backend and batch_size are in the key
    gpu=True,
    fingerprint=files_fingerprint,
    description="lm-evaluation-harness tasks (Open LLM Leaderboard, IFEval) on the model",
)
def lm_eval(job: Job, model: ArtifactRef, cfg: LmEvalConfig, model_name: str) -> ArtifactRef:
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sgpo.evals import lm_harness as lh

    manager = lh.task_manager(cfg.include_paths)
    lh.check_task_names(
        [t.name for t in cfg.tasks], cfg.include_paths, manager
    )  # before any model is loaded
    model_dir = job.model_dir(model)
    if any(t.name in cfg.chat_template_tasks for t in cfg.tasks):
        from sgpo.generate import require_chat_template

        require_chat_template(model_dir)
    lh.ensure_punkt_tab()
    t0 = time.perf_counter()
    lm = lh.load_lm(model_dir, cfg, trust_remote_code=job.ctx.trust_remote_code)
    load_s = time.perf_counter() - t0
    out = lh.run_tasks(lm, manager, cfg)
    run_s = time.perf_counter() - t0 - load_s
    specs = {t.name: t for t in cfg.tasks}
    meta = {
        task: {
            "num_fewshot": out["n-shot"].get(task),
            "task_version": out["versions"].get(task),
            "chat_template": out["chat_template"].get(task, False),
        }
        for task in out["results"]
    }
    rows = lh.metric_rows(out["results"], meta)
    for r in rows:
        spec = specs.get(r["task"])
        r["headline"] = bool(spec and spec.metric and r["metric"] == spec.metric)
    samples = lh.sample_rows(out["samples"])
    headline = {r["task"]: r["value"] for r in rows if r["headline"]}
    decoding = {
        task: (c or {}).get("generation_kwargs")
        for task, c in out["configs"].items()
        if (c or {}).get("output_type") == "generate_until"
    }
    report = {
        "benchmark": BENCHMARK,
        "model": model_name,
        "lm_eval_version": out.get("lm_eval_version"),
        "tasks": [t.model_dump() for t in cfg.tasks],
        "n_shot": out["n-shot"],
        "task_versions": out["versions"],
        "chat_template": out["chat_template"],
        "decoding": decoding,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "comparable": cfg.limit is None,
        "headline": headline,
        "results": {
            k: {m: v for m, v in res.items() if m != "alias"} for k, res in out["results"].items()
        },
        "n_samples": len(samples),
        "model_load_seconds": round(load_s, 3),
        "run_seconds": round(run_s, 3),
        "judge_model": None,
        "prompt_version": {t: f"lm_eval:{t}@v{out['versions'].get(t)}" for t in out["results"]},
    }
    job.log.info(
        "lm_eval: %s",
        ", ".join(f"{k} {v:.4f}" for k, v in headline.items() if v is not None) or "done",
    )
    job.log_metrics(
        {
            f"{k}/{r['metric']}": r["value"]
            for r in rows
            for k in [r["task"]]
            if r["value"] is not None
        }
    )
    report_uri = job.publish_json("report.json", report)
    buf = io.BytesIO()
    pq.write_table(
        pa.Table.from_pylist(samples) if samples else pa.table({"task": pa.array([], pa.string())}),
        buf,
        compression="zstd",
    )
    samples_uri = report_uri.rsplit("/", 1)[0] + "/samples.parquet"
    with fsspec.open(
        samples_uri, "wb", **(job.store.storage_options or {})
    ) as f:  # before the manifest
        f.write(buf.getvalue())
    summary = {k: v for k, v in report.items() if k not in ("results", "tasks")} | {
        "report_uri": report_uri,
        "samples_uri": samples_uri,
    }
    return job.publish_table(
        pa.Table.from_pylist(rows),
        summary=summary,
        seeds={"lm_eval": cfg.seed},
        extra={
            "report": report_uri,
            "samples": samples_uri,
            "samples_sha256": sha256_bytes(buf.getvalue()),
        },
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(lm_eval))
