"""Evaluation stage `arena_hard_judge`: Arena-Hard v0.1 judgments and the score with its 95% CI.

Reads the answers of `arena_hard_generate` (questions joined with the baseline's answers), judges
both games of every question with `sgpo.evals.arena_hard.judge` (upstream's protocol, follow-up
turn included), scores them with `sgpo.evals.arena_hard.judgments`, and publishes a Parquet artifact
with one row per question in the official judgment structure (`question_id`, `model`, `judge`,
`games` = two dicts with `user_prompt`, `judgment`, `score`), each game also keeping the raw judge
responses, its turn count and status for audit; plus `report.json`.
"""

from __future__ import annotations

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import ArenaHardJudgeConfig
from sgpo.core import Job, stage, stage_main
from sgpo.evals.arena_hard.judge import calls_payload, judge_games, load_judge_settings
from sgpo.evals.arena_hard.judgments import arena_hard_metrics, judgment_schema
from sgpo.llm.endpoint import require_endpoint

CODE_VERSION = "2"


def prompt_versions(cfg: ArenaHardJudgeConfig) -> dict[str, str]:
    return {"judge": load_judge_settings(cfg.judge_settings)[1]}


def check_reused(ref: ArtifactRef, cfg: ArenaHardJudgeConfig) -> None:
    """A stored judgment is reused only under the unlabelled share this config accepts."""
    from sgpo.evals.pairwise import check_labelled

    n, without = ref.summary.get("n_games"), ref.summary.get("n_games_without_label")
    if isinstance(n, int) and isinstance(without, int):
        check_labelled(
            "arena_hard",
            "arena_hard",
            n - without,
            n,
            cfg.max_unlabelled_fraction,
            label="a verdict label ([[A>B]] and the like)",
            prompt_field="judge_settings",
        )


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@stage(
    "arena_hard_judge",
    section="arena_hard",
    recipe="evaluation",
    code_version=CODE_VERSION,
    llm="endpoint",
    preflight=require_endpoint,
    check_reuse=check_reused,
    prompts=prompt_versions,
    retries=1,
    description="Arena-Hard v0.1 judging: two games per question, BT score, 95% CI",
)
def arena_hard_judge(job: Job, answers: ArtifactRef, cfg: ArenaHardJudgeConfig) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.evals.pairwise import check_labelled

    rows = job.read_rows(answers)
    _, settings_version = load_judge_settings(cfg.judge_settings)
    calls_key = stage_cache_key(
        "arena_hard_judge/calls", code_version="1", config=calls_payload(cfg), inputs={}
    )
    games, totals = judge_games(
        rows,
        cfg,
        journal_url=job.store.work_url("arena_hard_judge", calls_key) + "/calls",
        namespace=f"arena_hard_judge:1:{settings_version}",
        storage_options=job.store.storage_options,
        log=job.log,
    )
    records = [
        {
            "question_id": r["question_id"],
            "model": r["model_id"],
            "judge": cfg.endpoint.model,
            "baseline": r["baseline_model"],
            "category": r["category"],
            "games": g,
        }
        for r, g in zip(rows, games)
    ]
    model_name = rows[0]["model_id"] if rows else None
    baseline = rows[0]["baseline_model"] if rows else None
    n_games = sum(len(gs) for gs in games)
    check_labelled(
        "arena_hard",
        "arena_hard",
        sum(g["score"] is not None for gs in games for g in gs),
        n_games,
        cfg.max_unlabelled_fraction,
        label="a verdict label ([[A>B]] and the like)",
        fix="answers are journaled per judge model and settings: another arena_hard.endpoint.model or "
        "judge_settings asks again",
        prompt_field="judge_settings",
    )  # before publishing
    metrics = (
        arena_hard_metrics(records, cfg, model_name, baseline)
        if rows
        else {"score": None, "score_note": "no questions"}
    )
    report = {
        "benchmark": "arena_hard_v0.1",
        "benchmark_version": "arena-hard-v0.1",
        "decoding": (answers.summary or {}).get("decoding"),
        "model": model_name,
        "baseline": baseline,
        "judge_model": cfg.endpoint.model,
        "n_questions": len(records),
        **metrics,
        "n_games": n_games,
        "n_games_without_label": sum(g["score"] is None for gs in games for g in gs),
        "n_follow_up_turns": sum(max(g["turns"] - 1, 0) for gs in games for g in gs),
        "bootstrap_rounds": cfg.bootstrap_rounds,
        "seed": cfg.seed,
        "weight": cfg.weight,
        "judge_settings": settings_version,
        **totals,
    }
    job.log.info(
        "arena_hard: score %s %s over %d questions",
        report.get("score"),
        report.get("ci"),
        len(records),
    )
    job.log_metrics(report)
    report_uri = job.publish_json("report.json", report)  # before the manifest
    return job.publish_table(
        pa.Table.from_pylist(records, schema=judgment_schema()),
        summary={**report, "report_uri": report_uri},
        seeds={"bootstrap": cfg.seed},
        extra={"report": report_uri},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(arena_hard_judge))
