"""Arena-Hard v0.1 judging: lm-sys/arena-hard-auto v0.1 (`gen_judgment.py`).

* Judge: the official settings file `sgpo/prompts/arena_hard_judge_v0.1.yaml` (system prompt,
  `prompt_template`, `regex_pattern`), temperature 0, max_tokens 4096. Each question is judged in
  two games: game 1 shows the baseline as assistant A and the model as B, game 2 swaps them.
* Follow-up turn (upstream `judgment()`): the judge's answers are concatenated
  (`judgment += "\\n" + new_judgment`) and parsed with the regex; when no label is found at all the
  conversation continues with the assistant's answer and the user turn "continue your judgment and
  finish by outputting a final verdict label", up to `number_of_judgment_attempts` (2) turns. A
  judgment with conflicting labels gets no score and no follow-up, as upstream.

Judge calls are journaled by `call_all`, keyed by the judge settings (`calls_payload`), not by the
metric settings.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from artifacts.hashing import sha256_text
from sgpo.config import ArenaHardJudgeConfig
from sgpo.llm.client import ChatRequest, call_all
from sgpo.prompts import PROMPT_DIR, PromptError

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
