"""Stage 8, `judge`: the final policy's win rate against the eval set's baseline answers.

The policy answers each eval prompt (sampling settings from the config), and the one pairwise
judge of `sgpo.evals.pairwise` (AlpacaEval 2.0's protocol: official prompt and order, one token, logprob
preference, identical outputs 1.5 without a call, shared journal) compares its answer with the
row's reference (the baseline, output_1). On the AlpacaEval file this is the AlpacaEval 2.0 raw
win rate, the same number `sgpo evaluate` reports for the same answers. Output: AlpacaEval-format
annotations (Parquet) and `report.json` (win rate, SE, discrete win rate, counts, cost).
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import JudgeStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.evals.pairwise import PairJudge
from sgpo.llm.endpoint import require_endpoint


def prompt_versions(cfg: JudgeStageConfig) -> dict[str, str]:
    return {"judge": PairJudge.from_config(cfg).prompt_version}


def check_reused(ref: ArtifactRef, cfg: JudgeStageConfig) -> None:
    from sgpo.evals.pairwise import check_reused

    check_reused("judge", "judge", ref.summary, cfg.max_unlabelled_fraction)


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@stage(
    "judge",
    section="judge",
    # 3: the policy's answers seeded per sample (not per batch); the back-end is in the key
    code_version="3",
    llm="endpoint",
    preflight=require_endpoint,
    check_reuse=check_reused,
    gpu=True,
    prompts=prompt_versions,
    retries=1,
    description="win rate of the policy's answers vs the eval set's baselines (AlpacaEval 2.0 judge)",
)
def judge(job: Job, policy: ArtifactRef, data: ArtifactRef, cfg: JudgeStageConfig) -> ArtifactRef:
    # code_version 2: the AlpacaEval-protocol judge of sgpo.evals.pairwise (was its own prompt and order)
    import pyarrow as pa

    from sgpo.core.progress import stage_progress
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
    from sgpo.generate import answer_each
    from sgpo.llm.client import cost_line

    rows = job.read_rows(data)
    answers = answer_each(
        job.model_dir(policy),
        [r["prompt"] for r in rows],
        cfg.sampling,
        trust_remote_code=job.ctx.trust_remote_code,
    )
    judge_ = PairJudge.from_config(cfg)
    with stage_progress("judge", len(rows), logger=job.log) as progress:
        results, calls = judge_pairs(
            [(r["prompt"], r["reference"], a.text) for r, a in zip(rows, answers)],
            judge_,
            store=job.store,
            progress=progress,
        )
    check_judged(
        "judge", "judge", results, cfg.max_unlabelled_fraction
    )  # before anything is published
    table = annotation_rows(
        [
            {
                "instruction": r["prompt"],
                "output_1": r["reference"],
                "generator_1": "reference",
                "dataset": None,
                "output_2": a.text,
                "generator_2": "policy",
                "index": i,
            }
            for i, (r, a) in enumerate(zip(rows, answers))
        ],
        results,
        judge_,
    )
    if calls is not None:
        job.log.info("%s", cost_line("judge", calls, cfg.endpoint))
    # LC needs the official 805-instruction set with row positions: `sgpo evaluate` reports it.
    report = {
        **leaderboard_report(table, resolve_lc_inputs("none", "none")),
        "prompt_version": judge_.prompt_version,
        "judge_model": cfg.endpoint.model,
        **call_totals(calls),
        **label_report(results),
    }
    report.pop("lc_weights", None)
    job.log.info(
        "judge: win rate %s over %d labelled of %d%s",
        report["win_rate"],
        report["n_labelled"],
        report["n"],
        label_note(report),
    )
    job.log_metrics(report)
    report_uri = job.publish_json("report.json", report)  # before the manifest
    return job.publish_table(
        pa.Table.from_pylist(table, schema=annotation_schema()),
        summary={**report, "report_uri": report_uri},
        seeds={"order": cfg.order_seed, "sampling": cfg.sampling.seed},
        extra={"report": report_uri},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(judge))
