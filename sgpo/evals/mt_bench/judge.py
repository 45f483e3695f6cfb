"""MT-Bench single-answer grading: lm-sys/FastChat `fastchat/llm_judge/gen_judgment.py` (mode
`single`).

* Prompts: the official `single-v1` / `single-v1-multi-turn` prompts, and for the reference-guided
  categories (math, reasoning, coding) `single-math-v1` / `single-math-v1-multi-turn` with GPT-4's
  reference answers (`sgpo/prompts/mt_bench_judge_single_v1.jsonl`, verbatim). The template is
  filled with `str.format` (question, answer, ref_answer_1; multi-turn: question_1/2, answer_1/2,
  ref_answer_1/2) and sent after the prompt's system message, at temperature 0, max 2048 tokens.
  Turn 1 is graded on the first exchange, turn 2 on the whole conversation.
* Rating: upstream's regexes, `\\[\\[(\\d+\\.?\\d*)\\]\\]` then `\\[(\\d+\\.?\\d*)\\]`; no match is a
  failure (upstream: score -1, left out of the means). Failures are counted and reported
  (`n_no_rating`, per turn); when no judgment at all has a rating, `require_ratings` fails with the
  count.

Judge calls go through `call_all` (a durable journal keyed by `calls_payload`: the judge settings and
the prompt version).
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from typing import Any

from artifacts.hashing import sha256_text
from sgpo.config import DatasetSpec, MTBenchJudgeConfig
from sgpo.data.sources import DatasetError, load_records
from sgpo.llm.client import CallRecord, ChatRequest
from sgpo.prompts import PROMPT_DIR, PromptError

# FastChat common.py
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


class NoRatingError(RuntimeError):
    """No judge answer held a [[rating]]: the score would be meaningless."""


@cache
def load_judge_prompts(name: str) -> tuple[dict[str, dict[str, Any]], str]:
    """({prompt name: record}, version) of `sgpo/prompts/NAME.jsonl`; version = NAME@sha256(text)[:12]."""
    path = PROMPT_DIR / f"{name}.jsonl"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.jsonl")))
        raise PromptError(f"unknown MT-Bench judge prompts {name!r}; available: {known}")
    text = path.read_text()
    prompts = {}
    for line in text.splitlines():
        if line.strip():
            rec = json.loads(line)
            prompts[rec["name"]] = rec
    for needed in (
        "single-v1",
        "single-math-v1",
        "single-v1-multi-turn",
        "single-math-v1-multi-turn",
    ):
        if needed not in prompts:
            raise PromptError(f"MT-Bench judge prompts {path} lack {needed!r}")
    return prompts, f"{name}@{sha256_text(text)[:12]}"


def parse_rating(judgment: str) -> float | None:
    """Upstream `run_judge_single`: the first `[[x]]`, else the first `[x]`; None when neither is there."""
    match = re.search(ONE_SCORE_PATTERN, judgment) or re.search(ONE_SCORE_PATTERN_BACKUP, judgment)
    if not match:
        return None
    return float(ast.literal_eval(match.groups()[0]))


def load_references(cfg: MTBenchJudgeConfig) -> dict[str, list[str]]:
    if cfg.reference_answers is None:
        return {}
    out = {}
    for rec in load_records(DatasetSpec(path=cfg.reference_answers, split="train")):
        try:
            out[str(rec["question_id"])] = list(rec["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            continue
    if not out:
        raise DatasetError(
            f"MT-Bench reference answers {cfg.reference_answers!r}: no record with question_id and "
            "choices[0].turns"
        )
    return out


def judge_messages(
    prompts: dict[str, dict[str, Any]], row: dict[str, Any], turn: int, ref: list[str] | None
) -> tuple[str, list[dict[str, str]]]:
    """(prompt name, messages) for one turn of one answer, as upstream `run_judge_single`."""
    name = ("single-math-v1" if ref is not None else "single-v1") + (
        "-multi-turn" if turn == 2 else ""
    )
    p = prompts[name]
    q, a = row["turns"], row["answers"]
    if turn == 2:
        kwargs = {"question_1": q[0], "question_2": q[1], "answer_1": a[0], "answer_2": a[1]}
        if ref is not None:
            kwargs |= {"ref_answer_1": ref[0], "ref_answer_2": ref[1]}
    else:
        kwargs = {"question": q[0], "answer": a[0]}
        if ref is not None:
            kwargs["ref_answer_1"] = ref[0]
    user = p["prompt_template"].format(**kwargs)
    return name, [
        {"role": "system", "content": p["system_prompt"]},
        {"role": "user", "content": user},
    ]


def calls_payload(cfg: MTBenchJudgeConfig) -> dict[str, Any]:
    return {
        "model": cfg.endpoint.model,
        "prompts": load_judge_prompts(cfg.judge_prompts)[1],
        "temperature": cfg.judge_temperature,
        "max_tokens": cfg.judge_max_tokens,
    }


def check_references(
    rows: list[dict[str, Any]], cfg: MTBenchJudgeConfig, refs: dict[str, list[str]]
) -> None:
    """Every question of a reference-guided category has its reference (checked before any call
    is paid for)."""
    need_ref = [r for r in rows if r["category"] in cfg.reference_categories]
    missing = (
        [r["question_id"] for r in need_ref if r["question_id"] not in refs]
        if refs or need_ref
        else []
    )
    if cfg.reference_answers is not None and missing:
        raise DatasetError(
            f"MT-Bench reference answers {cfg.reference_answers!r} lack questions {missing[:10]} "
            f"(categories {cfg.reference_categories} are graded against a reference)"
        )


def judgment_requests(
    rows: list[dict[str, Any]],
    cfg: MTBenchJudgeConfig,
    prompts: dict[str, dict[str, Any]],
    refs: dict[str, list[str]],
) -> tuple[list[dict[str, Any]], list[ChatRequest]]:
    """Per turn of every answer: its judgment record (still without the verdict) and its request."""
    items, reqs = [], []
    for r in rows:
        ref = (
            refs.get(r["question_id"])
            if r["category"] in cfg.reference_categories and refs
            else None
        )
        for turn in (1, 2):
            name, messages = judge_messages(prompts, r, turn, ref)
            items.append(
                {
                    "question_id": r["question_id"],
                    "category": r["category"],
                    "turn": turn,
                    "model": r["model_id"],
                    "judge": cfg.endpoint.model,
                    "judge_prompt": name,
                    "user_prompt": messages[1]["content"],
                }
            )
            reqs.append(
                ChatRequest(
                    key=f"{r['question_id']}/turn{turn}",
                    messages=messages,
                    temperature=cfg.judge_temperature,
                    top_p=1.0,
                    max_tokens=cfg.judge_max_tokens,
                )
            )
    return items, reqs


def grade(items: list[dict[str, Any]], records: list[CallRecord]) -> None:
    """Fill each judgment record with the judge's answer and its rating (None: no rating)."""
    for item, rec in zip(items, records):
        ok = rec.status == "ok"
        text = (rec.text or "") if ok else ""
        score = parse_rating(text) if ok else None
        item.update(
            judgment=text,
            score=score,
            raw_response=rec.raw_response,
            status=("ok" if score is not None else "no_rating")
            if ok
            else (rec.reason or "invalid"),
        )


def require_ratings(items: list[dict[str, Any]], judge_model: str) -> None:
    """Raise NoRatingError when judgments exist but none holds a rating: the score would be
    meaningless (the judge is not following the prompt)."""
    if not items or any(it["score"] is not None for it in items):
        return
    reasons: dict[str, int] = {}
    for it in items:
        reasons[it["status"]] = reasons.get(it["status"], 0) + 1
    raise NoRatingError(
        f"mt_bench_judge: none of the {len(items)} judgments has a [[rating]] ({reasons}); "
        f"judge {judge_model!r} is not following the MT-Bench prompt (first answer: "
        f"{(items[0]['judgment'] or '')[:120]!r}). The paid answers stay in the journal."
    )
