"""The testbed's external LLM and judge: an oracle annotator and a verifier judge (docs/testbed.md).

Both are ChatBackends of the embedded OpenAI-compatible server, so annotation and judging reach
them through the real openai client over HTTP, with the real prompts, and parse those prompts
(no side channel: the instruction text alone says what the correct answer is, sgpo.data.testbed):

* **annotator** (`embedded_llm.annotator: oracle`, model name ORACLE_MODEL_NAME):
  - the annotate prompt (annotate_improve_v1: instruction, response A, response B) -> y_imp, a
    minimal edit of B toward the correct answer that is never better than A
    (`sgpo.data.testbed.minimal_improvement`);
  - the plain prompt (external_answer_v1: the instruction itself) -> y_ext, the correct answer.
* **judge** (`embedded_llm.judge: testbed`, model name VERIFIER_MODEL_NAME): the AlpacaEval judge
  prompt -> one token whose top logprobs give
  p("m") = sigmoid(SHARPNESS * (quality(shown first) - quality(shown second))), with
  `sgpo.data.testbed.quality` the documented score; order-independent, equal quality = 0.5.

Any other request (or a prompt that does not parse) goes to the fallback backend (the model).
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

from sgpo.data.testbed import SCORE_VERSION, gold, minimal_improvement, quality, render

ORACLE_VERSION = "v1"
SHARPNESS = 10.0
ORACLE_MODEL_NAME = f"sgpo-testbed-oracle-{ORACLE_VERSION}-score-{SCORE_VERSION}"
VERIFIER_MODEL_NAME = f"sgpo-testbed-verifier-{ORACLE_VERSION}-score-{SCORE_VERSION}-k{SHARPNESS:g}"


@cache
def _template_regex(name: str) -> re.Pattern:
    """A prompt file as a regex: each {field} a named group, the rest literal (render() strips the text)."""
    from sgpo.prompts import load_prompt

    text = load_prompt(name).text.strip()
    out, pos = "", 0
    for m in re.finditer(r"{(\w+)}", text):
        out += re.escape(text[pos : m.start()]) + f"(?P<{m.group(1)}>.*?)"
        pos = m.end()
    return re.compile("^" + out + re.escape(text[pos:]) + "$", re.S)


def parse_annotate_prompt(
    content: str, prompt: str = "annotate_improve_v1"
) -> tuple[str, str, str] | None:
    """(instruction, response A, response B) from a rendered annotate prompt, or None."""
    m = _template_regex(prompt).match(content.strip())
    return (m["instruction"], m["response_a"], m["response_b"]) if m else None


def p_first(first: str, second: str, instruction: str) -> float:
    return 1.0 / (
        1.0 + math.exp(-SHARPNESS * (quality(first, instruction) - quality(second, instruction)))
    )


class TestbedBackend:
    """Oracle annotator and/or verifier judge in front of `fallback` (a ChatBackend)."""

    def __init__(self, fallback: Any, *, judge: bool, annotator: bool):
        self.fallback, self.judge, self.annotator = fallback, judge, annotator

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        from sgpo.llm.rule_judge import judge_answer, parse_judge_prompt
        from sgpo.llm.server import ChatResult

        content = messages[-1].get("content", "") if messages else ""
        if self.judge and top_logprobs and (parsed := parse_judge_prompt(messages)) is not None:
            instruction, first, second = parsed
            return judge_answer(
                p_first(first, second, instruction),
                top_logprobs=top_logprobs,
                prompt_tokens=len(content.split()),
            )
        if self.annotator:
            answer = None
            if (parsed_a := parse_annotate_prompt(content)) is not None:
                answer = minimal_improvement(*parsed_a)
            elif (g := gold(content)) is not None:  # the plain prompt is the instruction itself
                answer = render(g)
            if answer is not None:
                return ChatResult(
                    text=answer,
                    finish_reason="stop",
                    prompt_tokens=len(content.split()),
                    completion_tokens=len(answer.split()) + 1,
                )
        return self.fallback.chat(
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            top_logprobs=top_logprobs,
            stop=stop,
        )
