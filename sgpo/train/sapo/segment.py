"""Cutting y+ = A + B + C and splicing the rejected answer y- = A + B' + C (or A + B').

Everything here works on token ids and a `random.Random`, so the rules are checkable by hand.

y+ and y- end the same way: with the chat template's end of an assistant turn (`end`: e.g.
SmolLM2's `<|im_end|>` + newline, the tokens the template writes after an answer's content, as
TRL's DPO sees a chosen answer), so the only difference between them is the segment and DPO / ORPO
cannot learn the turn's formatting instead of its quality. The cut is planned on the answer's
CONTENT (y+ without `end`) and `end` always closes both: after C, or right after B' when the
generator stops (a token of `stop`, e.g. EOS or the end-of-turn token) within |B| tokens.

The cut rule (same rule as the published SAPO code, written from its description):
  L = len(content), n = |B| = min(segment_length, L);
  the cut c is drawn uniformly from {0, ..., L - min_tail - n} when that upper end is > 0, else c = 0.
  So B = content[c : c + n], A = content[:c], C = content[c + n:], and a long answer keeps at least
  `min_tail` content tokens in C. An answer shorter than segment_length gets n = L (B is all of it) and
  the cut is recorded as adapted. With segment=False (the 'no segment' ablation) c = 0 and B is
  the whole content; the generator may then write up to `whole_answer_budget` tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Cut:
    position: int  # |A|: tokens of y+ kept before the regenerated segment
    length: int  # |B|: tokens of y+ replaced (also max_new_tokens for B')
    adapted: bool  # |B| < the configured segment length (the answer was too short)


def plan_cut(
    answer_len: int,
    segment_length: int,
    rng: random.Random,
    *,
    min_tail: int = 3,
    segment: bool = True,
) -> Cut:
    """Where to cut an answer of `answer_len` tokens (rule in the module docstring)."""
    if answer_len < 1:
        raise ValueError("an answer needs at least one token")
    if not segment:
        return Cut(0, answer_len, False)
    length = min(segment_length, answer_len)
    last = answer_len - min_tail - length
    position = rng.randint(0, last) if last > 0 else 0
    return Cut(position, length, length < segment_length)


def splice_rejected(
    content: list[int], cut: Cut, generated: list[int], *, stop: set[int], end: list[int]
) -> tuple[list[int], bool]:
    """y- from y+'s content and the generated tokens; returns (y-, ended): ended when B' stopped.

    B' is the first `cut.length` generated tokens, up to the first token of `stop` (not kept). When
    B' stopped, y- = A + B' + end; otherwise y- = A + B' + C + end. y+ = content + end.
    """
    b_prime = list(generated[: cut.length])
    a = content[: cut.position]
    at = next((i for i, t in enumerate(b_prime) if t in stop), None)
    if at is not None:
        return a + b_prime[:at] + end, True
    return a + b_prime + content[cut.position + cut.length :] + end, False


def truncate_pair(
    prompt: list[int], answer: list[int], max_prompt_length: int, max_length: int
) -> tuple[list[int], list[int]]:
    """Keep the END of a long prompt (max_prompt_length) and the START of the answer, so that
    prompt + answer fits max_length (the published code's keep_end mode)."""
    if len(prompt) + len(answer) > max_length:
        prompt = prompt[-max_prompt_length:]
        answer = answer[: max_length - len(prompt)]
    return prompt, answer
