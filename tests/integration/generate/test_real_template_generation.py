"""Generation ends where a real chat model ends its turn (issue 20): on a SmolLM2-like model
(its chat template, pad = eos = <|im_end|>), the transformers back-end and the stand-in stop at
<|im_end|>, strip it, report finish_reason "stop" and count it; an end-of-sequence token that only
the checkpoint's generation config names (Qwen2.5-Instruct's <|endoftext|> beside <|im_end|>) ends
the answer too."""

from __future__ import annotations

import json

import pytest

from sgpo.config import SamplingConfig
from tests.helpers.smol import build_smol_like

QUESTIONS = [
    [{"role": "user", "content": "Hi?"}],
    [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. What is 12 + 30?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there!"}],
]


@pytest.fixture(scope="module")
def says_hi(tmp_path_factory):
    """Answers every chat prompt with 'Hi' and ends its turn with <|im_end|> (id 2 = eos = pad)."""
    return build_smol_like(
        tmp_path_factory.mktemp("hi") / "m", script={"\n": "H", "H": "i", "i": "<|im_end|>"}
    )


@pytest.fixture(scope="module")
def ends_with_endoftext(tmp_path_factory):
    """Ends its answer 'H' with <|endoftext|> (id 0), an EOS only its generation config names."""
    out = build_smol_like(
        tmp_path_factory.mktemp("eot") / "m", script={"\n": "H", "H": "<|endoftext|>"}
    )
    cfg = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**cfg, "eos_token_id": [2, 0]}))
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_transformers_backend_stops_at_im_end_and_strips_it(says_hi, temperature):
    from sgpo.generate.hf import TransformersGenerator

    gen = TransformersGenerator(str(says_hi))
    assert gen.tokenizer.pad_token_id == gen.tokenizer.eos_token_id == 2  # left padding with eos
    n = 2 if temperature else 1
    params = SamplingConfig(max_new_tokens=16, temperature=temperature, batch_size=3, n=n)
    out = gen.generate(QUESTIONS, params)
    assert [[(g.text, g.finish_reason, g.completion_tokens) for g in s] for s in out] == [
        [("Hi", "stop", 3)] * n
    ] * 3


def test_an_eos_named_by_the_generation_config_ends_the_answer(ends_with_endoftext):
    from sgpo.generate.hf import TransformersGenerator

    gen = TransformersGenerator(str(ends_with_endoftext))
    assert gen.eos_ids == [0, 2]
    out = gen.generate(QUESTIONS[:2], SamplingConfig(max_new_tokens=16, temperature=0.0))
    assert [(s[0].text, s[0].finish_reason, s[0].completion_tokens) for s in out] == [
        ("H", "stop", 2)
    ] * 2


def test_the_stand_in_answers_like_the_backend(says_hi, ends_with_endoftext):
    from sgpo.llm.server import TransformersChatBackend

    for model, text in ((says_hi, "Hi"), (ends_with_endoftext, "H")):
        backend = TransformersChatBackend(model)
        r = backend.chat(
            QUESTIONS[2],
            max_tokens=16,
            temperature=0.0,
            top_p=1.0,
            seed=0,
            top_logprobs=None,
            stop=None,
        )
        assert (r.text, r.finish_reason, r.completion_tokens) == (text, "stop", len(text) + 1)
        backend.close()
