"""Evaluation stage `alpaca_eval_judge`: AlpacaEval 2.0 annotations and leaderboard metrics.

The judge is `sgpo.evals.pairwise` (the official `weighted_alpaca_eval_gpt4_turbo` protocol: prompt,
order, one-token logprob preference, identical outputs 1.5 without a call). Metrics are
`sgpo.evals.alpaca_eval.report.leaderboard_report`, the same code `sgpo metrics alpaca-eval` runs: raw
and discrete win rates with standard errors, and the LC win rate with the configured instruction
difficulty and gamed-baseline rows (the report says which sources were used and whether the GLM
was regularised). The LC inputs are resolved before any judge call is paid for.

The judge journal is keyed by the judge settings only, not by the metric settings or the row
selection, so recomputing LC with another difficulty table, or judging more rows, never pays
twice for a judgment already made.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import AlpacaEvalJudgeConfig
from sgpo.core import Job, stage, stage_main
from sgpo.evals.pairwise import PairJudge
from sgpo.llm.endpoint import require_endpoint


def prompt_versions(cfg: AlpacaEvalJudgeConfig) -> dict[str, str]:
    return {"judge": PairJudge.from_config(cfg).prompt_version}


def check_reused(ref: ArtifactRef, cfg: AlpacaEvalJudgeConfig) -> None:
    from sgpo.evals.pairwise import check_reused

    check_reused("alpaca_eval", "alpaca_eval", ref.summary, cfg.max_unlabelled_fraction)


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@stage(
    "alpaca_eval_judge",
    section="alpaca_eval",
    recipe="evaluation",
    code_version="2",
    llm="endpoint",
    preflight=require_endpoint,
    check_reuse=check_reused,
    prompts=prompt_versions,
    retries=1,
    description="AlpacaEval 2.0 judging: WR, discrete WR, LC WR and SEs",
)
def alpaca_eval_judge(job: Job, answers: ArtifactRef, cfg: AlpacaEvalJudgeConfig) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.evals.alpaca_eval import leaderboard_report, resolve_lc_inputs
    from sgpo.evals.pairwise import (
        annotation_rows,
        annotation_schema,
        call_totals,
        check_judged,
        judge_pairs,
        label_note,
        label_report,
    )

    lc = resolve_lc_inputs(
        cfg.instruction_difficulty,
        cfg.gamed_annotations,  # fail before paying for calls
        offline_dir=cfg.lc_offline_dir,
    )
    rows = job.read_rows(answers)
    judge = PairJudge.from_config(cfg)
    results, calls = judge_pairs(
        [(r["instruction"], r["baseline_output"], r["output"]) for r in rows],
        judge,
        store=job.store,
        progress=lambda done, total: (
            job.log.info("alpaca_eval: %d/%d judgments", done, total)
            if done == total or done % 100 == 0
            else None
        ),
    )
    check_judged(
        "alpaca_eval", "alpaca_eval", results, cfg.max_unlabelled_fraction
    )  # before anything is published
    table = annotation_rows(
        [
            {
                "instruction": r["instruction"],
                "output_1": r["baseline_output"],
                "generator_1": r["baseline_generator"],
                "dataset": r["dataset"],
                "output_2": r["output"],
                "generator_2": r["generator"],
                "index": r["index"],
            }
            for r in rows
        ],
        results,
        judge,
    )
    metrics = leaderboard_report(
        table, lc, n_source_rows=(answers.summary or {}).get("n_source_rows")
    )
    report = {
        "benchmark": "alpaca_eval_2",
        "benchmark_version": "alpaca_eval 2.0 (weighted_alpaca_eval_gpt4_turbo)",
        "decoding": (answers.summary or {}).get("decoding"),
        "annotator": table[0]["annotator"] if table else None,
        "judge_model": cfg.endpoint.model,
        "model": rows[0]["generator"] if rows else None,
        "baseline": rows[0]["baseline_generator"] if rows else None,
        **metrics,
        "prompt_version": judge.prompt_version,
        **call_totals(calls),
        **label_report(results),
    }
    job.log.info(
        "alpaca_eval: WR %s, LC %s over %d labelled of %d (%s)%s",
        report["win_rate"],
        report["lc_win_rate"],
        report["n_labelled"],
        report["n"],
        report["lc_note"] or "LC ok",
        label_note(report),
    )
    job.log_metrics(report)
    report_uri = job.publish_json("report.json", report)  # before the manifest
    summary = {k: v for k, v in report.items() if k != "lc_weights"} | {"report_uri": report_uri}
    return job.publish_table(
        pa.Table.from_pylist(table, schema=annotation_schema()),
        summary=summary,
        seeds={"order": cfg.order_seed},
        extra={
            "report": report_uri,
            "lc_inputs": {
                k: report.get(k) for k in ("difficulty_source", "gamed_source", "lc_hub_error")
            },
        },
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(alpaca_eval_judge))
