"""Evaluation stage `arena_hard_judge`: Arena-Hard v0.1 judgments and the score with its 95% CI.

Protocol: lm-sys/arena-hard-auto v0.1 (`gen_judgment.py`, `show_result.py`).

* Judge: the official settings file `sgpo/prompts/arena_hard_judge_v0.1.yaml` (system prompt,
  `prompt_template`, `regex_pattern`), temperature 0, max_tokens 4096. Each question is judged in
  two games: game 1 shows the baseline as assistant A and the model as B, game 2 swaps them.
* Follow-up turn (upstream `judgment()`): the judge's answers are concatenated
  (`judgment += "\\n" + new_judgment`) and parsed with the regex; when no label is found at all the
  conversation continues with the assistant's answer and the user turn "continue your judgment and
  finish by outputting a final verdict label", up to `number_of_judgment_attempts` (2) turns. A
  judgment with conflicting labels gets no score and no follow-up, as upstream.
* Score: battles with strong verdicts (A>>B, B>>A) counted `weight` (3) times, Bradley-Terry
  (Elo scale) anchored at the baseline named by `arena_hard_generate`, predicted win rate vs the
  baseline, 95% CI from `bootstrap_rounds` (100) resamples with a fixed seed (42), all via
  `sgpo.evals.arena_hard.metrics`.

Output: a Parquet artifact with one row per question in the official judgment structure
(`question_id`, `model`, `judge`, `games` = two dicts with `user_prompt`, `judgment`, `score`), each
game also keeping the raw judge responses, its turn count and status for audit; plus `report.json`.
Judge calls are journaled by `call_all`, keyed by the judge settings (not the metric settings).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from artifacts.hashing import sha256_text, stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import ArenaHardJudgeConfig
from sgpo.core import Job, stage, stage_main
from sgpo.llm.client import ChatRequest
from sgpo.llm.endpoint import require_endpoint
from sgpo.prompts import PROMPT_DIR, PromptError

CODE_VERSION = "2"
# upstream gen_judgment.py (v0.1), verbatim
FOLLOW_UP = "continue your judgment and finish by outputting a final verdict label"


@cache
def load_judge_settings(name: str) -> tuple[dict[str, Any], str]:
    """(settings, version) of `sgpo/prompts/NAME.yaml`; version = NAME@sha256(text)[:12] like prompt files."""
    import yaml

    path = PROMPT_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.yaml")))
        raise PromptError(f"unknown judge settings {name!r}; available: {known}")
    text = path.read_text()
    settings = yaml.safe_load(text)
    for field in ("system_prompt", "prompt_template", "regex_pattern"):
        if field not in settings:
            raise PromptError(f"judge settings {path} lack {field!r}")
    return settings, f"{name}@{sha256_text(text)[:12]}"


def judge_messages(
    settings: dict[str, Any], question: str, answer_a: str, answer_b: str
) -> list[dict[str, str]]:
    """Upstream v0.1: system prompt, then each template (v0.1 has one) formatted with
    `question_1`, `answer_1` (assistant A) and `answer_2` (assistant B) as a user turn."""
    conv = [{"role": "system", "content": settings["system_prompt"]}]
    templates = settings["prompt_template"]
    for template in [templates] if isinstance(templates, str) else templates:
        conv.append(
            {
                "role": "user",
                "content": template.format(
                    question_1=question, answer_1=answer_a, answer_2=answer_b
                ),
            }
        )
    return conv


def patterns(settings: dict[str, Any]) -> tuple[str, ...]:
    p = settings["regex_pattern"]
    return (p,) if isinstance(p, str) else tuple(p)


def calls_payload(cfg: ArenaHardJudgeConfig) -> dict[str, Any]:
    """What determines the judge's answers: its journal key."""
    return {
        "model": cfg.endpoint.model,
        "max_invalid_retries": cfg.endpoint.max_invalid_retries,
        "settings": load_judge_settings(cfg.judge_settings)[1],
        "temperature": cfg.judge_temperature,
        "max_tokens": cfg.judge_max_tokens,
    }


def prompt_versions(cfg: ArenaHardJudgeConfig) -> dict[str, str]:
    return {"judge": load_judge_settings(cfg.judge_settings)[1]}


def judge_games(
    rows: list[dict[str, Any]],
    cfg: ArenaHardJudgeConfig,
    *,
    journal_url: str,
    namespace: str,
    storage_options: dict | None = None,
    log: Any = None,
) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Both games of every row, with upstream's follow-up turn; returns (games per row, call totals)."""
    from sgpo.evals.arena_hard.metrics import get_score
    from sgpo.llm.client import call_all

    settings, _ = load_judge_settings(cfg.judge_settings)
    pats = patterns(settings)
    games: dict[tuple[int, int], dict[str, Any]] = {}
    convs: dict[tuple[int, int], list[dict[str, str]]] = {}
    for i, r in enumerate(rows):
        for g, (a, b) in enumerate(
            ((r["baseline_answer"], r["answer"]), (r["answer"], r["baseline_answer"]))
        ):
            convs[(i, g)] = judge_messages(settings, r["question"], a, b)
            games[(i, g)] = {
                "user_prompt": convs[(i, g)][1]["content"],
                "judgment": "",
                "score": None,
                "turns": 0,
                "status": "pending",
                "raw_responses": [],
            }
    totals = {
        "judge_calls": 0,
        "from_journal": 0,
        "sent": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": None,
        "invalid_reasons": {},
    }
    pending = list(games)
    for turn in range(cfg.judgment_attempts):
        if not pending:
            break
        reqs = [
            ChatRequest(
                key=f"{rows[i]['question_id']}/game{g + 1}/turn{turn + 1}",
                messages=convs[(i, g)],
                temperature=cfg.judge_temperature,
                top_p=1.0,
                max_tokens=cfg.judge_max_tokens,
            )
            for i, g in pending
        ]
        res = call_all(
            reqs,
            cfg.endpoint,
            journal_url=journal_url,
            namespace=namespace,
            storage_options=storage_options,
            allow_truncated=True,  # upstream keeps a cut judgment and parses it
            progress=(
                lambda d, t, turn=turn: (
                    log.info("arena_hard: turn %d: %d/%d judgments", turn + 1, d, t)
                    if d == t or d % 100 == 0
                    else None
                )
            )
            if log
            else None,
        )
        totals["judge_calls"] += len(res.records)
        totals["from_journal"] += res.n_from_journal
        totals["sent"] += res.n_sent
        totals["prompt_tokens"] += res.prompt_tokens
        totals["completion_tokens"] += res.completion_tokens
        if res.cost_usd is not None:
            totals["cost_usd"] = (totals["cost_usd"] or 0.0) + res.cost_usd
        for reason, n in res.invalid_reasons.items():
            totals["invalid_reasons"][reason] = totals["invalid_reasons"].get(reason, 0) + n
        still = []
        for (i, g), rec in zip(pending, res.records):
            game = games[(i, g)]
            game["turns"] += 1
            game["raw_responses"].append(rec.raw_response)
            if rec.status != "ok":
                game["status"] = rec.reason or "invalid"
                continue
            new = rec.text or ""
            game["judgment"] += "\n" + new
            score, try_again = get_score(game["judgment"], pats)
            game["score"] = score
            convs[(i, g)] = convs[(i, g)] + [{"role": "assistant", "content": new}]
            if not try_again:
                game["status"] = "ok" if score is not None else "conflicting_labels"
                continue
            game["status"] = "no_label"
            convs[(i, g)] = convs[(i, g)] + [{"role": "user", "content": FOLLOW_UP}]
            still.append((i, g))
        pending = still
    return [[games[(i, 0)], games[(i, 1)]] for i in range(len(rows))], totals


def arena_hard_metrics(
    records: list[dict[str, Any]], cfg: ArenaHardJudgeConfig, model_name: str, baseline: str
) -> dict[str, Any]:
    from sgpo.evals.arena_hard.metrics import format_ci, score

    labels: dict[str, int] = {}
    for rec in records:
        for game in rec["games"]:
            label = game["score"] if game["score"] is not None else "none"
            labels[label] = labels.get(label, 0) + 1
    out: dict[str, Any] = {
        "score": None,
        "ci_low": None,
        "ci_high": None,
        "ci": None,
        "elo": None,
        "n_battles": 0,
        "labels": labels,
        "score_note": None,
    }
    try:
        res = score(
            records,
            baseline=baseline,
            rounds=cfg.bootstrap_rounds,
            seed=cfg.seed,
            weight=cfg.weight,
        )
    except ValueError as e:  # no usable label at all
        out["score_note"] = str(e)
        return out
    m = res.get(model_name, {})
    out.update({k: m.get(k) for k in ("score", "ci_low", "ci_high", "elo", "n_battles")})
    if out["score"] is not None and out["ci_low"] is not None:
        out["ci"] = format_ci(out["score"], out["ci_low"], out["ci_high"])
    return out


def judgment_schema():
    """Parquet schema of the judgments: the official record fields, each game with audit fields."""
    import pyarrow as pa

    game = pa.struct(
        [
            ("user_prompt", pa.string()),
            ("judgment", pa.string()),
            ("score", pa.string()),
            ("turns", pa.int64()),
            ("status", pa.string()),
            ("raw_responses", pa.list_(pa.string())),
        ]
    )
    return pa.schema(
        [
            ("question_id", pa.string()),
            ("model", pa.string()),
            ("judge", pa.string()),
            ("baseline", pa.string()),
            ("category", pa.string()),
            ("games", pa.list_(game)),
        ]
    )


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@stage(
    "arena_hard_judge",
    section="arena_hard",
    recipe="evaluation",
    code_version=CODE_VERSION,
    llm="endpoint",
    preflight=require_endpoint,
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


def judgments_from_table(table: Any) -> list[dict[str, Any]]:
    """The official judgment records (`question_id`, `model`, `judge`, `games[{user_prompt, judgment, score}]`)
    from a published `arena_hard_judge` table, e.g. to write a .jsonl for `sgpo metrics arena-hard`."""
    out = []
    for rec in table.to_pylist():
        out.append(
            {
                "question_id": rec["question_id"],
                "model": rec["model"],
                "judge": rec["judge"],
                "games": [
                    {
                        "user_prompt": g["user_prompt"],
                        "judgment": g["judgment"],
                        "score": g["score"],
                    }
                    for g in rec["games"]
                ],
            }
        )
    return out


if __name__ == "__main__":
    raise SystemExit(stage_main(arena_hard_judge))
