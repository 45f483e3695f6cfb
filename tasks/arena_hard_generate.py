"""Evaluation stage `arena_hard_generate`: the model's answers to the Arena-Hard v0.1 questions.

Protocol: lm-sys/arena-hard-auto v0.1 `gen_answer.py`: one user turn per question, greedy
(temperature 0), the model's chat template. The questions are joined with the baseline's
answers (gpt-4-0314) here, so `arena_hard_judge` reads one table.
"""

from __future__ import annotations

import json
from typing import Any

from artifacts.hashing import sha256_text
from artifacts.refs import ArtifactRef
from sgpo.config import ArenaHardGenerateConfig, DatasetSpec
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import DatasetError, load_records, source_fingerprint

PROMPT_CANDIDATES = ("prompt", "instruction", "question")
RESPONSE_CANDIDATES = ("output", "response", "answer", "completion")


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


def load_arena_hard_rows(
    cfg: ArenaHardGenerateConfig,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Questions joined with their baseline answers (question order), and counts (read, skipped)."""
    questions = load_records(_spec(cfg.questions, cfg.revision))
    if not questions:
        raise DatasetError(f"Arena-Hard questions {cfg.questions!r} are empty")
    columns = list(questions[0])
    prompt_col = None if "turns" in columns else _first_col(columns, PROMPT_CANDIDATES)
    if "turns" not in columns and prompt_col is None:
        raise DatasetError(
            f"Arena-Hard questions {cfg.questions!r}: no 'turns' nor a prompt column "
            f"{PROMPT_CANDIDATES} in {columns}"
        )
    baselines: dict[str, str] = {}
    if cfg.baseline_answers is not None:
        for rec in load_records(_spec(cfg.baseline_answers, cfg.revision)):
            text = _answer_text(rec)
            if rec.get("question_id") is not None and isinstance(text, str):
                baselines[str(rec["question_id"])] = text
        if not baselines:
            raise DatasetError(
                f"Arena-Hard baseline answers {cfg.baseline_answers!r}: no record with "
                "question_id and choices[0].turns[0].content"
            )
        resp_col = None
    else:
        resp_col = _first_col(columns, RESPONSE_CANDIDATES)
        if resp_col is None:
            raise DatasetError(
                f"arena_hard.baseline_answers is null but the questions {cfg.questions!r} have no "
                f"answer column {RESPONSE_CANDIDATES}; columns: {columns}"
            )
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
        rows.append(
            {
                "question_id": qid,
                "category": str(q.get("category") or "arena-hard-v0.1"),
                "cluster": q.get("cluster"),
                "question": text,
                "baseline_answer": baseline,
            }
        )
        if cfg.max_rows is not None and len(rows) >= cfg.max_rows:
            break
    return rows, {"questions_read": len(questions), "questions_skipped": skipped}


def data_fingerprint(cfg: ArenaHardGenerateConfig) -> dict[str, str]:
    """The question and baseline files by content (local) or name + revision (remote)."""
    parts = {"questions": source_fingerprint(_spec(cfg.questions, cfg.revision))}
    if cfg.baseline_answers is not None:
        parts["baseline"] = source_fingerprint(_spec(cfg.baseline_answers, cfg.revision))
    return {"data": sha256_text(json.dumps(parts, sort_keys=True))}


@stage(
    "arena_hard_generate",
    section="arena_hard",
    recipe="evaluation",
    code_version="3",  # 3: the generation back-end is in the key
    gpu=True,
    fingerprint=data_fingerprint,
    description="the model's greedy answers to the Arena-Hard v0.1 questions",
)
def arena_hard_generate(
    job: Job, model: ArtifactRef, cfg: ArenaHardGenerateConfig, model_name: str
) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generate import answer_each

    rows, counts = load_arena_hard_rows(cfg)
    job.log.info("arena_hard: %s answers %d questions (%s)", model_name, len(rows), counts)
    answers = answer_each(
        job.model_dir(model),
        [r["question"] for r in rows],
        cfg.sampling,
        trust_remote_code=job.ctx.trust_remote_code,
    )
    table = [
        {
            **r,
            "baseline_model": cfg.baseline_name,
            "model_id": model_name,
            "answer": a.text,
            "token_len": a.completion_tokens,
            "finish_reason": a.finish_reason,
        }
        for r, a in zip(rows, answers)
    ]
    summary = {
        "n": len(table),
        **counts,
        "truncated": sum(t["finish_reason"] == "length" for t in table),
        "decoding": {
            k: getattr(cfg.sampling, k) for k in ("temperature", "top_p", "max_new_tokens", "seed")
        },
    }
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table),
        summary=summary,
        seeds={"sampling": cfg.sampling.seed},
        extra={"data_fingerprint": data_fingerprint(cfg)["data"]},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(arena_hard_generate))
