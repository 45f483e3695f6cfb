"""A judge with a documented taste, for the tiny preset: the embedded server's answer to judge prompts.

The tiny stand-in model cannot judge (it prefers whichever answer it is shown second), so every
variant would score the same. With `embedded_llm.judge: rule`, the embedded server answers the
AlpacaEval judge prompt (sgpo.evals.pairwise) itself, from a deterministic quality score of each output,
and every other request (annotation) with the model as before. The score, version RULE_VERSION:

    quality(output) = distinct(output) * fullness(output) + 0.5 * relevance(output, instruction)

    distinct  = distinct words / words           (1 for no repetition; tiny models loop)
    fullness  = min(1, words / 30)               (an empty or one-word answer is not an answer)
    relevance = |words(output) & words(instruction)| / |words(instruction)|   (on topic)

with words = lower-cased runs of letters and digits. The judge answers one token whose top
logprobs give p("m") = sigmoid(8 * (quality(shown first) - quality(shown second))), so the
preference depends on the two outputs only, never on the order they are shown in, and the win
rate moves when a policy's answers get longer, less repetitive or more on topic. It measures
nothing a user cares about beyond that; it exists so that tiny runs of different recipes get
different, reproducible numbers through the real judge and metric code.
"""

from __future__ import annotations

import math
import re
from typing import Any

RULE_VERSION = "v1"
MODEL_NAME = f"sgpo-rule-judge-{RULE_VERSION}"
_WORDS = re.compile(r"[a-z0-9]+")
_INSTRUCTION = re.compile(r'"instruction": """(.*?)""",\n}', re.S)
_OUTPUTS = re.compile(r'"output": """(.*?)"""\n    }', re.S)


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def quality(output: str, instruction: str) -> float:
    w = words(output)
    if not w:
        return 0.0
    distinct = len(set(w)) / len(w)
    fullness = min(1.0, len(w) / 30)
    topic = set(words(instruction))
    relevance = len(set(w) & topic) / len(topic) if topic else 0.0
    return distinct * fullness + 0.5 * relevance


def p_first(first: str, second: str, instruction: str) -> float:
    """p('m'): the probability that the output shown first is the better one."""
    return 1.0 / (
        1.0 + math.exp(-8.0 * (quality(first, instruction) - quality(second, instruction)))
    )


def judge_answer(p_first_shown: float, *, top_logprobs: int, prompt_tokens: int) -> Any:
    """The one-token answer of AlpacaEval's judge format: 'm' or 'M', with the top logprobs of both
    giving p('m') = `p_first_shown` (clamped away from 0 and 1, so both logprobs are finite)."""
    from sgpo.llm.server import ChatResult

    p = min(max(p_first_shown, 1e-6), 1 - 1e-6)
    tops = sorted(
        [{"token": "m", "logprob": math.log(p)}, {"token": "M", "logprob": math.log(1 - p)}],
        key=lambda t: -t["logprob"],
    )[: max(top_logprobs, 1)]
    return ChatResult(
        text=tops[0]["token"],
        finish_reason="length",
        prompt_tokens=prompt_tokens,
        completion_tokens=1,
        logprobs=[{**tops[0], "top_logprobs": tops}],
    )


def parse_judge_prompt(messages: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """(instruction, shown first, shown second) from AlpacaEval's judge prompt, or None."""
    text = messages[-1].get("content", "") if messages else ""
    instruction = _INSTRUCTION.search(text)
    outputs = _OUTPUTS.findall(text)
    if instruction is None or len(outputs) != 2:
        return None
    return instruction.group(1), outputs[0], outputs[1]


class RuleJudgeBackend:
    """Judge prompts answered by the rule above; anything else goes to `fallback` (a ChatBackend)."""

    def __init__(self, fallback: Any):
        self.fallback = fallback

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        parsed = parse_judge_prompt(messages) if top_logprobs else None
        if parsed is None:
            return self.fallback.chat(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                top_logprobs=top_logprobs,
                stop=stop,
            )
        instruction, first, second = parsed
        return judge_answer(
            p_first(first, second, instruction),
            top_logprobs=top_logprobs,
            prompt_tokens=len(words(messages[-1]["content"])),
        )
