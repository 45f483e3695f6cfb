"""SAPO's y+ and y- end the same way on real chat templates (issue 21 item 3, issue 20): the only
difference between them is the regenerated segment, and y+ is the chosen answer exactly as TRL's
DPO tokenises it (content + the template's end of an assistant turn)."""

from __future__ import annotations

import pytest

from sgpo.config import SAPOConfig
from sgpo.train.sapo.buffer import ReplayBuffer
from sgpo.train.sapo.loop import regenerate_into_buffer, tokenize_rows
from sgpo.train.trainers import NAMED_CHAT_TEMPLATES
from tests.helpers.smol import SMOLLM2_TEMPLATE, build_tokenizer

ANSWER = "The capital of France is Paris. It is a big city."
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2():
    return (
        build_tokenizer()
    )  # SmolLM2's template verbatim: turn end <|im_end|> + newline, eos <|im_end|>


def chatml_base():
    """A base model given sft.chat_template=chatml (e.g. Meta-Llama-3-8B): the turn ends
    <|im_end|> + the tokenizer's own EOS (here <|endoftext|>, not <|im_end|>) + newline."""
    tok = build_tokenizer()
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = NAMED_CHAT_TEMPLATES["chatml"]
    return tok


def trl_chosen_ids(tok, messages, answer) -> list[int]:
    """How TRL's DPOTrainer tokenises a conversational chosen answer (prompt and prompt + answer
    through the template; the completion is what follows the prompt)."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    assert full.startswith(prompt)
    return tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("make", [smollm2, chatml_base], ids=["smollm2", "chatml-base"])
def test_y_plus_is_the_chosen_answer_trl_sees(make):
    tok = make()
    assert tok.chat_template in (SMOLLM2_TEMPLATE, NAMED_CHAT_TEMPLATES["chatml"])
    ex = tokenize_rows(
        [(MESSAGES, ANSWER)], tok, SAPOConfig(max_prompt_length=256, max_length=512)
    )[0]
    assert ex.answer_ids == trl_chosen_ids(tok, MESSAGES, ANSWER)
    assert ex.content_ids == tok(ANSWER, add_special_tokens=False)["input_ids"]
    ends = {"smollm2": "<|im_end|>\n", "chatml-base": "<|im_end|><|endoftext|>\n"}
    assert tok.decode(ex.end_ids) == ends[make.__name__.replace("_base", "-base")]


@pytest.mark.parametrize("make", [smollm2, chatml_base], ids=["smollm2", "chatml-base"])
def test_y_plus_and_y_minus_differ_only_in_the_segment(make):
    """The EMA model writes B' as it was trained to: ending the turn with the template's end-of-turn
    token (and, on the chatml base model, its EOS) when it reaches the end, or running on."""
    tok = make()
    cfg = SAPOConfig(
        max_prompt_length=256,
        max_length=512,
        segment_length=4,
        min_tail_tokens=3,
        batch_size=2,
        buffer_capacity=8,
        rejected_per_prompt=1,
    )
    examples = tokenize_rows([(MESSAGES, ANSWER)] * 2, tok, cfg)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    word = tok("x", add_special_tokens=False)["input_ids"]  # one token
    written = {
        0: word + [im_end, tok.eos_token_id, 99],  # B' ends the answer, as the model would
        1: (word * 4)[:8],  # B' runs on for all of |B|
    }

    def regenerate(model, tokenizer, prefixes, budgets, settings):
        assert im_end in settings.stop  # B' stops at the end-of-turn token, not only at EOS
        return [[written[i]] for i in range(len(prefixes))]

    buffer = ReplayBuffer(capacity=8)
    regenerate_into_buffer(cfg, 0, examples, [0, 1], None, tok, buffer, regenerate)
    entries = buffer.snapshot()
    assert [e["ended_at_eos"] for e in entries] == [True, False]
    for e in entries:
        y_plus, y_minus, cut, n = e["chosen_ids"], e["rejected_ids"], e["cut"], e["segment_tokens"]
        end = examples[0].end_ids
        assert y_plus[-len(end) :] == y_minus[-len(end) :] == end  # the same ending
        assert y_minus[:cut] == y_plus[:cut]  # the same A
        if e["ended_at_eos"]:  # y- = A + B' + end
            assert y_minus == y_plus[:cut] + word + end
        else:  # y- = A + B' + C + end: only B differs
            tail = y_plus[cut + n :]
            assert y_minus == y_plus[:cut] + (word * 4)[:n] + tail
