"""Evaluation stage `mt_bench_judge`: MT-Bench single-answer grading (1-10) and the MT-Bench scores.

Protocol: lm-sys/FastChat `fastchat/llm_judge/gen_judgment.py` (mode `single`) and `show_result.py`.

* Prompts: the official `single-v1` / `single-v1-multi-turn` prompts, and for the reference-guided
  categories (math, reasoning, coding) `single-math-v1` / `single-math-v1-multi-turn` with GPT-4's
  reference answers (`sgpo/prompts/mt_bench_judge_single_v1.jsonl`, verbatim). The template is
  filled with `str.format` (question, answer, ref_answer_1; multi-turn: question_1/2, answer_1/2,
  ref_answer_1/2) and sent after the prompt's system message, at temperature 0, max 2048 tokens.
  Turn 1 is graded on the first exchange, turn 2 on the whole conversation.
* Rating: upstream's regexes, `\\[\\[(\\d+\\.?\\d*)\\]\\]` then `\\[(\\d+\\.?\\d*)\\]`; no match is a
  failure (upstream: score -1, left out of the means). Failures are counted and reported
  (`n_no_rating`, per turn); when no judgment at all has a rating the stage fails with the count.
* Scores: mean rating of turn 1, of turn 2, and overall (all rated judgments of both turns, the MT-Bench
  score), and a per-category table (turn 1, turn 2, overall).

Judge calls go through `call_all` (durable journal keyed by the judge settings and the prompt version).
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from typing import Any

from artifacts.hashing import sha256_text, stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec, MTBenchJudgeConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import DatasetError, load_records
from sgpo.llm.client import ChatRequest
from sgpo.llm.endpoint import require_endpoint
from sgpo.prompts import PROMPT_DIR, PromptError

CODE_VERSION = "1"
BENCHMARK = "mt_bench"
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


def prompt_versions(cfg: MTBenchJudgeConfig) -> dict[str, str]:
    return {"judge": load_judge_prompts(cfg.judge_prompts)[1]}


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


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def mt_bench_scores(judgments: list[dict[str, Any]]) -> dict[str, Any]:
    """Upstream `display_result_single`: rated judgments only; turn 1, turn 2, overall; plus per category."""
    rated = [j for j in judgments if j["score"] is not None]
    by_turn = {t: [j["score"] for j in rated if j["turn"] == t] for t in (1, 2)}
    categories = sorted({j["category"] for j in judgments})
    table = []
    for c in categories:
        cj = [j for j in rated if j["category"] == c]
        table.append(
            {
                "category": c,
                "turn_1": _mean([j["score"] for j in cj if j["turn"] == 1]),
                "turn_2": _mean([j["score"] for j in cj if j["turn"] == 2]),
                "score": _mean([j["score"] for j in cj]),
                "n_rated": len(cj),
                "n_no_rating": sum(
                    1 for j in judgments if j["category"] == c and j["score"] is None
                ),
            }
        )
    return {
        "score": _mean([j["score"] for j in rated]),
        "score_turn_1": _mean(by_turn[1]),
        "score_turn_2": _mean(by_turn[2]),
        "n_judgments": len(judgments),
        "n_rated": len(rated),
        "n_no_rating": len(judgments) - len(rated),
        "n_no_rating_turn_1": sum(1 for j in judgments if j["turn"] == 1 and j["score"] is None),
        "n_no_rating_turn_2": sum(1 for j in judgments if j["turn"] == 2 and j["score"] is None),
        "categories": table,
    }


def judgment_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("question_id", pa.string()),
            ("category", pa.string()),
            ("turn", pa.int64()),
            ("model", pa.string()),
            ("judge", pa.string()),
            ("judge_prompt", pa.string()),
            ("user_prompt", pa.string()),
            ("judgment", pa.string()),
            ("score", pa.float64()),
            ("status", pa.string()),
            ("raw_response", pa.string()),
        ]
    )


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

    from sgpo.llm.client import call_all

    prompts, version = load_judge_prompts(cfg.judge_prompts)
    rows = job.read_rows(answers)
    refs = load_references(cfg)
    need_ref = [r for r in rows if r["category"] in cfg.reference_categories]
    missing = (
        [r["question_id"] for r in need_ref if r["question_id"] not in refs]
        if refs or need_ref
        else []
    )
    if cfg.reference_answers is not None and missing:  # before any call is paid for
        raise DatasetError(
            f"MT-Bench reference answers {cfg.reference_answers!r} lack questions {missing[:10]} "
            f"(categories {cfg.reference_categories} are graded against a reference)"
        )
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
    for item, rec in zip(items, res.records):
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
    scores = mt_bench_scores(items)
    if items and scores["n_rated"] == 0:
        reasons = {}
        for it in items:
            reasons[it["status"]] = reasons.get(it["status"], 0) + 1
        raise NoRatingError(
            f"mt_bench_judge: none of the {len(items)} judgments has a [[rating]] ({reasons}); "
            f"judge {cfg.endpoint.model!r} is not following the MT-Bench prompt (first answer: "
            f"{(items[0]['judgment'] or '')[:120]!r}). The paid answers stay in the journal."
        )
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
