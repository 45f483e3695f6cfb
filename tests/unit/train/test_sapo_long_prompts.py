"""Prompts of max_prompt_length tokens or more are dropped, as the published SAPO code's filter does
(run_dpo.py / run_orpo.py keep `prompt_length < max_prompt_length`), unless long_prompts=truncate."""

from __future__ import annotations

from sgpo.config import SAPOConfig
from sgpo.train.sapo.loop import tokenize_rows


class CharTokenizer:
    """One token per character; the chat template is the user text plus a 2-token generation prompt."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True):
        text = "".join(m["content"] for m in messages) + ("A:" if add_generation_prompt else "")
        return [ord(c) for c in text]


def rows(*prompt_lengths: int):
    return [([{"role": "user", "content": "x" * n}], "answer") for n in prompt_lengths]


def test_prompts_at_or_over_the_limit_are_dropped():
    cfg = SAPOConfig(max_prompt_length=10, max_length=40, segment_length=4, batch_size=1)
    # prompt tokens = n + 2: 7 -> 9 kept, 8 -> 10 dropped (not < 10), 20 -> 22 dropped
    kept = tokenize_rows(rows(7, 8, 20, 3), CharTokenizer(), cfg)
    assert [len(ex.prompt_ids) for ex in kept] == [9, 5]
    assert kept[0].answer_ids == [ord(c) for c in "answer"] + [0]


def test_truncate_keeps_the_end_of_a_long_prompt():
    cfg = SAPOConfig(
        max_prompt_length=10, max_length=20, segment_length=4, batch_size=1, long_prompts="truncate"
    )
    (ex,) = tokenize_rows(rows(20), CharTokenizer(), cfg)
    # 22 + 7 > 20: the prompt keeps its last 10 tokens, the answer the first 10 of its 7
    assert ex.prompt_ids == [ord(c) for c in "xxxxxxxxA:"] and len(ex.answer_ids) == 7


def test_every_prompt_too_long_leaves_no_rows():
    cfg = SAPOConfig(max_prompt_length=10, max_length=40, segment_length=4, batch_size=1)
    assert tokenize_rows(rows(30, 40), CharTokenizer(), cfg) == []  # train_sapo then names the key
