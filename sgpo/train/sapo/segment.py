"""Cutting y+ = A + B + C and splicing the rejected answer y- = A + B' + C (or A + B').

Everything here works on token ids and a `random.Random`, so the rules are checkable by hand.

The cut rule (same rule as the published SAPO code, written from its description):
  L = len(answer) (the answer's tokens including its final EOS), n = |B| = min(segment_length, L);
  the cut c is drawn uniformly from {0, ..., L - min_tail - n} when that upper end is > 0, else c = 0.
  So B = answer[c : c + n], A = answer[:c], C = answer[c + n:], and a long answer keeps at least
  `min_tail` tokens in C. An answer shorter than segment_length gets n = L (B is all of it) and
  the cut is recorded as adapted. With segment=False (the 'no segment' ablation) c = 0 and B is
  the whole answer; the generator may then write up to `whole_answer_budget` tokens.
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
    answer: list[int], cut: Cut, generated: list[int], eos_id: int
) -> tuple[list[int], bool]:
    """y- from y+ and the generated tokens; returns (y-, ended): ended when B' reached EOS.

    B' is the first `cut.length` generated tokens, up to and including the first EOS. When B'
    holds an EOS the answer ends there (y- = A + B'); otherwise y- = A + B' + C.
    """
    b_prime = list(generated[: cut.length])
    a = answer[: cut.position]
    if eos_id in b_prime:
        return a + b_prime[: b_prime.index(eos_id) + 1], True
    return a + b_prime + answer[cut.position + cut.length :], False


def truncate_pair(
    prompt: list[int], answer: list[int], max_prompt_length: int, max_length: int
) -> tuple[list[int], list[int]]:
    """Keep the END of a long prompt (max_prompt_length) and the START of the answer, so that
    prompt + answer fits max_length (the published code's keep_end mode)."""
    if len(prompt) + len(answer) > max_length:
        prompt = prompt[-max_prompt_length:]
        answer = answer[: max_length - len(prompt)]
    return prompt, answer
