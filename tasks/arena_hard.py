"""Arena-Hard v0.1 stages: `arena_hard_generate` (greedy answers) and `arena_hard_judge`.

Protocol: lm-sys/arena-hard-auto v0.1 (`gen_answer.py`, `gen_judgment.py`, `show_result.py`).

* Answers: one user turn per question, greedy (temperature 0), the policy's chat template.
* Judge: the official settings file `sgpo/prompts/arena_hard_judge_v0.1.yaml` (system prompt,
  `prompt_template`, `regex_pattern`), temperature 0, max_tokens 4096. Each question is judged in
  two games: game 1 shows the baseline as assistant A and the model as B, game 2 swaps them.
* Follow-up turn (upstream `judgment()`): the judge's answers are concatenated
  (`judgment += "\\n" + new_judgment`) and parsed with the regex; when no label is found at all the
  conversation continues with the assistant's answer and the user turn "continue your judgment and
  finish by outputting a final verdict label", up to `number_of_judgment_attempts` (2) turns. A
  judgment with conflicting labels gets no score and no follow-up, as upstream.
* Score: battles with strong verdicts (A>>B, B>>A) counted `weight` (3) times, Bradley-Terry
  (Elo scale) anchored at the baseline, predicted win rate vs the baseline, 95% CI from
  `bootstrap_rounds` (100) resamples with a fixed seed (42), all via `sgpo.metrics.arena_hard`.

Output: a Parquet artifact with one row per question in the official judgment structure
(`question_id`, `model`, `judge`, `games` = two dicts with `user_prompt`, `judgment`, `score`), each
game also keeping the raw judge responses, its turn count and status for audit; plus `report.json`.
Judge calls are journaled by `call_all` (keyed by the judge settings, not the metric settings).
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from prefect import task

from artifacts.hashing import sha256_text, stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec, cache_payload
from sgpo.eval_config import ArenaHardConfig
from sgpo.llm.client import ChatRequest
from sgpo.prompts import PROMPT_DIR, PromptError
from sgpo.generation import answer_each
from tasks.alpaca_eval import BenchmarkDataError, load_records, source_fingerprint
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE_GENERATE = "arena_hard_generate"
STAGE_JUDGE = "arena_hard_judge"
CODE_VERSION = "1"
# upstream gen_judgment.py (v0.1), verbatim
FOLLOW_UP = "continue your judgment and finish by outputting a final verdict label"
PROMPT_CANDIDATES = ("prompt", "instruction", "question")
RESPONSE_CANDIDATES = ("output", "response", "answer", "completion")


# --------------------------------------------------------------------------------------------------
# Judge settings (official file)
# --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
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


def judge_messages(settings: dict[str, Any], question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """Upstream v0.1: system prompt, then each template (v0.1 has one) formatted with
    `question_1`, `answer_1` (assistant A) and `answer_2` (assistant B) as a user turn."""
    conv = [{"role": "system", "content": settings["system_prompt"]}]
    templates = settings["prompt_template"]
    for template in [templates] if isinstance(templates, str) else templates:
        conv.append({"role": "user", "content": template.format(question_1=question, answer_1=answer_a, answer_2=answer_b)})
    return conv


def patterns(settings: dict[str, Any]) -> tuple[str, ...]:
    p = settings["regex_pattern"]
    return (p,) if isinstance(p, str) else tuple(p)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def _spec(path: str, revision: str | None) -> DatasetSpec:
    return DatasetSpec(path=path, split="train", revision=revision)


def _first_col(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _answer_text(rec: dict[str, Any]) -> str | None:
    """`choices[0].turns[0].content` of an official model_answer record."""
    try:
        return rec["choices"][0]["turns"][0]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def load_arena_hard_rows(cfg: ArenaHardConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Questions joined with their baseline answers (question order), and counts (read, skipped)."""
    questions = load_records(_spec(cfg.questions, cfg.revision))
    if not questions:
        raise BenchmarkDataError(f"Arena-Hard questions {cfg.questions!r} are empty")
    columns = list(questions[0])
    prompt_col = None if "turns" in columns else _first_col(columns, PROMPT_CANDIDATES)
    if "turns" not in columns and prompt_col is None:
        raise BenchmarkDataError(f"Arena-Hard questions {cfg.questions!r}: no 'turns' nor a prompt column "
                                 f"{PROMPT_CANDIDATES} in {columns}")
    baselines: dict[str, str] = {}
    if cfg.baseline_answers is not None:
        for rec in load_records(_spec(cfg.baseline_answers, cfg.revision)):
            text = _answer_text(rec)
            if rec.get("question_id") is not None and isinstance(text, str):
                baselines[str(rec["question_id"])] = text
        if not baselines:
            raise BenchmarkDataError(f"Arena-Hard baseline answers {cfg.baseline_answers!r}: no record with "
                                     "question_id and choices[0].turns[0].content")
        resp_col = None
    else:
        resp_col = _first_col(columns, RESPONSE_CANDIDATES)
        if resp_col is None:
            raise BenchmarkDataError(f"arena_hard.baseline_answers is null but the questions {cfg.questions!r} have no "
                                     f"answer column {RESPONSE_CANDIDATES}; columns: {columns}")
    rows, skipped = [], 0
    for i, q in enumerate(questions):
        qid = str(q.get("question_id") or q.get("prompt_id") or q.get("id") or i)
        if prompt_col is None:  # official format: the first (v0.1: only) user turn
            turns = q.get("turns") or []
            text = turns[0].get("content") if turns and isinstance(turns[0], dict) else None
        else:
            text = q.get(prompt_col)
        baseline = baselines.get(qid) if resp_col is None else q.get(resp_col)
        if not isinstance(text, str) or not isinstance(baseline, str):
            skipped += 1  # upstream: "answer to {question_id} cannot be found" -> not judged
            continue
        rows.append({"question_id": qid, "category": str(q.get("category") or "arena-hard-v0.1"),
                     "cluster": q.get("cluster"), "question": text, "baseline_answer": baseline})
        if cfg.max_rows is not None and len(rows) >= cfg.max_rows:
            break
    return rows, {"questions_read": len(questions), "questions_skipped": skipped}


def data_fingerprint(cfg: ArenaHardConfig) -> str:
    parts = {"questions": source_fingerprint(_spec(cfg.questions, cfg.revision))}
    if cfg.baseline_answers is not None:
        parts["baseline"] = source_fingerprint(_spec(cfg.baseline_answers, cfg.revision))
    return sha256_text(json.dumps(parts, sort_keys=True))


# --------------------------------------------------------------------------------------------------
# Stage: generate
# --------------------------------------------------------------------------------------------------
def generate_payload(cfg: ArenaHardConfig, model_name: str) -> dict[str, Any]:
    return {"questions": cfg.questions, "baseline_answers": cfg.baseline_answers, "revision": cfg.revision,
            "max_rows": cfg.max_rows, "sampling": cache_payload(cfg.sampling), "model_name": model_name}


def generate_cache_key(model: ArtifactRef, cfg: ArenaHardConfig, model_name: str) -> str:
    return stage_cache_key(STAGE_GENERATE, code_version=CODE_VERSION, config=generate_payload(cfg, model_name),
                           inputs={"model": model.content_hash, "data": data_fingerprint(cfg)})


def run_arena_hard_generate(model: ArtifactRef, cfg: ArenaHardConfig, ctx: StageContext, *, model_name: str) -> ArtifactRef:
    import pyarrow as pa

    store = ctx.open_store()
    key = generate_cache_key(model, cfg, model_name)
    if (ref := ctx.reuse(store, STAGE_GENERATE, key)) is not None:
        return ref
    log = stage_logger(STAGE_GENERATE)
    rows, counts = load_arena_hard_rows(cfg)
    log.info("arena_hard: %s answers %d questions (%s)", model_name, len(rows), counts)
    with ctx.tracked(STAGE_GENERATE, generate_payload(cfg, model_name)) as tracker:
        answers = answer_each(store.model_dir(model), [r["question"] for r in rows], cfg.sampling,
                                   trust_remote_code=ctx.trust_remote_code)
        table = [{**r, "baseline_model": cfg.baseline_name, "model_id": model_name, "answer": a.text,
                  "token_len": a.completion_tokens, "finish_reason": a.finish_reason} for r, a in zip(rows, answers)]
        summary = {"n": len(table), **counts, "truncated": sum(t["finish_reason"] == "length" for t in table)}
        tracker.log_metrics(summary)
        ref = store.publish_table(
            STAGE_GENERATE, key, pa.Table.from_pylist(table),
            manifest=manifest(STAGE_GENERATE, CODE_VERSION, generate_payload(cfg, model_name), {"model": model},
                              seeds={"sampling": cfg.sampling.seed}, extra={"data_fingerprint": data_fingerprint(cfg)}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


# --------------------------------------------------------------------------------------------------
# Stage: judge
# --------------------------------------------------------------------------------------------------
def calls_payload(cfg: ArenaHardConfig) -> dict[str, Any]:
    """What determines the judge's answers: its journal key."""
    return {"model": cfg.endpoint.model, "max_invalid_retries": cfg.endpoint.max_invalid_retries,
            "settings": load_judge_settings(cfg.judge_settings)[1], "temperature": cfg.judge_temperature,
            "max_tokens": cfg.judge_max_tokens}


def judge_payload(cfg: ArenaHardConfig) -> dict[str, Any]:
    return {"judge": calls_payload(cfg), "judgment_attempts": cfg.judgment_attempts, "baseline_name": cfg.baseline_name,
            "weight": cfg.weight, "bootstrap_rounds": cfg.bootstrap_rounds, "seed": cfg.seed}


def judge_cache_key(answers: ArtifactRef, cfg: ArenaHardConfig) -> str:
    return stage_cache_key(STAGE_JUDGE, code_version=CODE_VERSION, config=judge_payload(cfg),
                           inputs={"answers": answers.content_hash},
                           prompts={"judge": load_judge_settings(cfg.judge_settings)[1]})


def judge_games(rows: list[dict[str, Any]], cfg: ArenaHardConfig, *, journal_url: str, namespace: str,
                storage_options: dict | None = None, log: Any = None) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Both games of every row, with upstream's follow-up turn; returns (games per row, call totals)."""
    from sgpo.llm.client import call_all
    from sgpo.metrics.arena_hard import get_score

    settings, _ = load_judge_settings(cfg.judge_settings)
    pats = patterns(settings)
    games: dict[tuple[int, int], dict[str, Any]] = {}
    convs: dict[tuple[int, int], list[dict[str, str]]] = {}
    for i, r in enumerate(rows):
        for g, (a, b) in enumerate(((r["baseline_answer"], r["answer"]), (r["answer"], r["baseline_answer"]))):
            convs[(i, g)] = judge_messages(settings, r["question"], a, b)
            games[(i, g)] = {"user_prompt": convs[(i, g)][1]["content"], "judgment": "", "score": None, "turns": 0,
                             "status": "pending", "raw_responses": []}
    totals = {"judge_calls": 0, "from_journal": 0, "sent": 0, "prompt_tokens": 0, "completion_tokens": 0,
              "cost_usd": None, "invalid_reasons": {}}
    pending = list(games)
    for turn in range(cfg.judgment_attempts):
        if not pending:
            break
        reqs = [ChatRequest(key=f"{rows[i]['question_id']}/game{g + 1}/turn{turn + 1}", messages=convs[(i, g)],
                            temperature=cfg.judge_temperature, top_p=1.0, max_tokens=cfg.judge_max_tokens)
                for i, g in pending]
        res = call_all(reqs, cfg.endpoint, journal_url=journal_url, namespace=namespace, storage_options=storage_options,
                       allow_truncated=True,  # upstream keeps a cut judgment and parses it
                       progress=(lambda d, t: log.info("arena_hard: turn %d: %d/%d judgments", turn + 1, d, t)
                                 if d == t or d % 100 == 0 else None) if log else None)
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


def arena_hard_metrics(records: list[dict[str, Any]], cfg: ArenaHardConfig, model_name: str) -> dict[str, Any]:
    from sgpo.metrics.arena_hard import format_ci, score

    labels: dict[str, int] = {}
    for rec in records:
        for game in rec["games"]:
            label = game["score"] if game["score"] is not None else "none"
            labels[label] = labels.get(label, 0) + 1
    out: dict[str, Any] = {"score": None, "ci_low": None, "ci_high": None, "ci": None, "elo": None,
                           "n_battles": 0, "labels": labels, "score_note": None}
    try:
        res = score(records, baseline=cfg.baseline_name, rounds=cfg.bootstrap_rounds, seed=cfg.seed, weight=cfg.weight)
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

    game = pa.struct([("user_prompt", pa.string()), ("judgment", pa.string()), ("score", pa.string()),
                      ("turns", pa.int64()), ("status", pa.string()), ("raw_responses", pa.list_(pa.string()))])
    return pa.schema([("question_id", pa.string()), ("model", pa.string()), ("judge", pa.string()),
                      ("baseline", pa.string()), ("category", pa.string()), ("games", pa.list_(game))])


def run_arena_hard_judge(answers: ArtifactRef, cfg: ArenaHardConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from tasks.annotate import ExternalLLMNotConfigured

    if not cfg.endpoint.base_url:
        raise ExternalLLMNotConfigured("arena_hard.endpoint.base_url is not set: configure the judge LLM")
    store = ctx.open_store()
    key = judge_cache_key(answers, cfg)
    if (ref := ctx.reuse(store, STAGE_JUDGE, key)) is not None:
        return ref
    log = stage_logger(STAGE_JUDGE)
    rows = store.read_table(answers).to_pylist()
    _, settings_version = load_judge_settings(cfg.judge_settings)
    calls_key = stage_cache_key(f"{STAGE_JUDGE}/calls", code_version=CODE_VERSION, config=calls_payload(cfg), inputs={})
    with ctx.tracked(STAGE_JUDGE, judge_payload(cfg)) as tracker:
        games, totals = judge_games(
            rows, cfg, journal_url=store.work_url(STAGE_JUDGE, calls_key) + "/calls",
            namespace=f"{STAGE_JUDGE}:{CODE_VERSION}:{settings_version}", storage_options=store.storage_options, log=log,
        )
        records = [{"question_id": r["question_id"], "model": r["model_id"], "judge": cfg.endpoint.model,
                    "baseline": r["baseline_model"], "category": r["category"], "games": g}
                   for r, g in zip(rows, games)]
        model_name = rows[0]["model_id"] if rows else None
        metrics = arena_hard_metrics(records, cfg, model_name) if rows else {"score": None, "score_note": "no questions"}
        report = {
            "benchmark": "arena_hard_v0.1", "model": model_name, "baseline": cfg.baseline_name,
            "judge_model": cfg.endpoint.model, "n_questions": len(records), **metrics,
            "n_games_without_label": sum(g["score"] is None for gs in games for g in gs),
            "n_follow_up_turns": sum(max(g["turns"] - 1, 0) for gs in games for g in gs),
            "bootstrap_rounds": cfg.bootstrap_rounds, "seed": cfg.seed, "weight": cfg.weight,
            "judge_settings": settings_version, **totals,
        }
        log.info("arena_hard: score %s %s over %d questions", report.get("score"), report.get("ci"), len(records))
        tracker.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        report_uri = store.publish_json(STAGE_JUDGE, key, "report.json", report)  # before the manifest
        ref = store.publish_table(
            STAGE_JUDGE, key, pa.Table.from_pylist(records, schema=judgment_schema()),
            manifest=manifest(STAGE_JUDGE, CODE_VERSION, judge_payload(cfg), {"answers": answers},
                              prompts={"judge": settings_version}, seeds={"bootstrap": cfg.seed},
                              extra={"report": report_uri}),
            summary={**report, "report_uri": report_uri}, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


def judgments_from_table(table: Any) -> list[dict[str, Any]]:
    """The official judgment records (`question_id`, `model`, `judge`, `games[{user_prompt, judgment, score}]`)
    from a published `arena_hard_judge` table, e.g. to write a .jsonl for `sgpo metrics arena-hard`."""
    out = []
    for rec in table.to_pylist():
        out.append({"question_id": rec["question_id"], "model": rec["model"], "judge": rec["judge"],
                    "games": [{"user_prompt": g["user_prompt"], "judgment": g["judgment"], "score": g["score"]}
                              for g in rec["games"]]})
    return out


# --------------------------------------------------------------------------------------------------
# Prefect tasks
# --------------------------------------------------------------------------------------------------
@task(name=STAGE_GENERATE, cache_key_fn=lambda _c, p: generate_cache_key(p["model"], p["cfg"], p["model_name"]),
      **TASK_DEFAULTS)
def arena_hard_generate_task(model: ArtifactRef, cfg: ArenaHardConfig, ctx: StageContext, model_name: str) -> ArtifactRef:
    return run_arena_hard_generate(model, cfg, ctx, model_name=model_name)


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@task(name=STAGE_JUDGE, cache_key_fn=lambda _c, p: judge_cache_key(p["answers"], p["cfg"]), retries=1,
      retry_delay_seconds=30, **TASK_DEFAULTS)
def arena_hard_judge_task(answers: ArtifactRef, cfg: ArenaHardConfig, ctx: StageContext) -> ArtifactRef:
    return run_arena_hard_judge(answers, cfg, ctx)
