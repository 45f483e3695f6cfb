"""Evaluation stage `mt_bench_judge`: MT-Bench single-answer grading (1-10) and the MT-Bench scores.

The protocol (FastChat's single-answer grading: official prompts, reference answers for math,
reasoning and coding, the rating regexes) is `sgpo.evals.mt_bench.judge`, the scores (turn 1, turn 2,
overall, per category) `sgpo.evals.mt_bench.scores`; this stage reads the answers of
`mt_bench_generate`, asks the judge through the journal, and publishes the judgments and
`report.json`.
"""

from __future__ import annotations

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import MTBenchJudgeConfig
from sgpo.core import Job, stage, stage_main
from sgpo.evals.mt_bench.generation import BENCHMARK
from sgpo.evals.mt_bench.judge import (
    calls_payload,
    check_references,
    grade,
    judgment_requests,
    load_judge_prompts,
    load_references,
    require_ratings,
)
from sgpo.evals.mt_bench.scores import judgment_schema, mt_bench_scores
from sgpo.llm.client import call_all
from sgpo.llm.endpoint import require_endpoint

CODE_VERSION = "1"


def prompt_versions(cfg: MTBenchJudgeConfig) -> dict[str, str]:
    return {"judge": load_judge_prompts(cfg.judge_prompts)[1]}


@stage(
    "mt_bench_judge",
    section="mt_bench",
    recipe="evaluation",
    code_version=CODE_VERSION,
    llm="endpoint",
    preflight=require_endpoint,
    prompts=prompt_versions,
    retries=1,
    description="MT-Bench single-answer grading: turn 1, turn 2, overall, per category",
)
def mt_bench_judge(job: Job, answers: ArtifactRef, cfg: MTBenchJudgeConfig) -> ArtifactRef:
    import pyarrow as pa

    prompts, version = load_judge_prompts(cfg.judge_prompts)
    rows = job.read_rows(answers)
    refs = load_references(cfg)
    check_references(rows, cfg, refs)  # before any call is paid for
    items, reqs = judgment_requests(rows, cfg, prompts, refs)
    calls_key = stage_cache_key(
        "mt_bench_judge/calls", code_version="1", config=calls_payload(cfg), inputs={}
    )
    res = call_all(
        reqs,
        cfg.endpoint,
        journal_url=job.store.work_url("mt_bench_judge", calls_key) + "/calls",
        namespace=f"mt_bench_judge:1:{version}",
        storage_options=job.store.storage_options,
        allow_truncated=True,  # upstream parses a cut judgment too
        progress=lambda d, t: (
            job.log.info("mt_bench: %d/%d judgments", d, t) if d == t or d % 50 == 0 else None
        ),
    )
    grade(items, res.records)
    require_ratings(items, cfg.endpoint.model)
    scores = mt_bench_scores(items)
    report = {
        "benchmark": BENCHMARK,
        "benchmark_version": "mt_bench (80 questions, FastChat llm_judge)",
        "model": rows[0]["model_id"] if rows else None,
        "judge_model": cfg.endpoint.model,
        "prompt_version": version,
        "judge_temperature": cfg.judge_temperature,
        "judge_max_tokens": cfg.judge_max_tokens,
        "reference_answers": cfg.reference_answers,
        "reference_categories": list(cfg.reference_categories),
        "decoding": (answers.summary or {}).get("decoding"),
        **scores,
        "judge_calls": len(res.records),
        "from_journal": res.n_from_journal,
        "sent": res.n_sent,
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "cost_usd": res.cost_usd,
    }
    job.log.info(
        "mt_bench: score %s (turn 1 %s, turn 2 %s), %d of %d judgments without a rating",
        report["score"],
        report["score_turn_1"],
        report["score_turn_2"],
        report["n_no_rating"],
        report["n_judgments"],
    )
    job.log_metrics({k: v for k, v in report.items() if k != "categories"})
    report_uri = job.publish_json("report.json", report)  # before the manifest
    return job.publish_table(
        pa.Table.from_pylist(items, schema=judgment_schema()),
        summary={**report, "report_uri": report_uri},
        extra={"report": report_uri},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(mt_bench_judge))
