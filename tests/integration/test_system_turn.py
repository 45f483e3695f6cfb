"""The chat template's default system turn, handled one way everywhere (issue 20).

SmolLM2's template inserts "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
as a system turn whenever a conversation has none (21 tokens; 26 of 45 prompt tokens on the
testbed). sgpo keeps it, as the model was trained with it, and never builds a prompt outside the
checkpoint's own template: so the prompt the policy is trained on (SFT, DPO, SAPO), the prompt it
answers (sampling, pairs, judging), the one perplexity is scored after and the one the stand-in LLM
answers are the same text, with that turn when the conversation has no system message and with the
conversation's own when it has one. Each stage's real tokenisation is captured here, at the model.
"""

from __future__ import annotations

import pytest

from sgpo.config import DPOStageConfig, SamplingConfig, SAPOConfig, SFTStageConfig
from tests.helpers.smol import DEFAULT_SYSTEM_TURN, build_smol_like

USER = [{"role": "user", "content": "What is the capital of France?"}]
WITH_SYSTEM = [{"role": "system", "content": "Answer in one word."}, *USER]
HEADER = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
EXPECTED = {
    "default": DEFAULT_SYSTEM_TURN + HEADER,
    "own": "<|im_start|>system\nAnswer in one word.<|im_end|>\n" + HEADER,
}
CONVERSATIONS = {"default": USER, "own": WITH_SYSTEM}


@pytest.fixture(scope="module")
def smol_like(tmp_path_factory):
    return build_smol_like(tmp_path_factory.mktemp("smol") / "m")


@pytest.fixture
def forward_inputs(monkeypatch):
    """Every input_ids batch that reaches the model's decoder, decoded (padding removed)."""
    from transformers.models.llama.modeling_llama import LlamaModel

    seen: list = []
    forward = LlamaModel.forward

    def spy(self, input_ids=None, attention_mask=None, **kw):
        if input_ids is not None:
            seen.append(
                (input_ids.clone(), None if attention_mask is None else attention_mask.clone())
            )
        return forward(self, input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(LlamaModel, "forward", spy)
    return seen


def _texts(tok, seen) -> list[str]:
    out = []
    for ids, mask in seen:
        for i, row in enumerate(ids):
            keep = row if mask is None else row[mask[i].bool()]
            out.append(tok.decode(keep))
    return out


def _prompt_of(text: str) -> str:
    return text[: text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")]


@pytest.mark.parametrize("kind", ["default", "own"])
def test_every_stage_renders_the_same_system_turn(smol_like, tmp_path, forward_inputs, kind):
    from sgpo.generate.hf import TransformersGenerator
    from sgpo.llm.server import TransformersChatBackend
    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.sapo.loop import tokenize_rows
    from sgpo.train.trainers import train_dpo, train_sft

    tok = load_tokenizer(smol_like)
    conv = CONVERSATIONS[kind]
    prompts: dict[str, str] = {}

    # sampling / pairs / judging (the transformers back-end): the first forward is the prompt
    forward_inputs.clear()
    TransformersGenerator(str(smol_like)).generate(
        [conv], SamplingConfig(max_new_tokens=2, temperature=0.0)
    )
    prompts["sampling"] = _texts(tok, forward_inputs[:1])[0]

    # the stand-in LLM (annotation, judging)
    forward_inputs.clear()
    backend = TransformersChatBackend(smol_like)
    backend.chat(
        conv, max_tokens=2, temperature=0.0, top_p=1.0, seed=0, top_logprobs=None, stop=None
    )
    backend.close()
    prompts["stand-in"] = _texts(tok, forward_inputs[:1])[0]

    # SFT (TRL's tokenisation of prompt + completion): the text up to the answer
    forward_inputs.clear()
    sft = SFTStageConfig(
        per_device_batch_size=1, effective_batch_size=1, max_steps=1, max_length=128, warmup_ratio=0
    )
    train_sft(str(smol_like), [(conv, "Paris.")], sft, tmp_path / "sft", tracker=None)
    prompts["sft"] = _prompt_of(_texts(tok, forward_inputs[:1])[0])

    # DPO (TRL's tokenisation, chosen and rejected rows)
    forward_inputs.clear()
    dpo = DPOStageConfig(
        per_device_batch_size=1, effective_batch_size=1, max_steps=1, max_length=128, warmup_ratio=0
    )
    train_dpo(
        str(smol_like),
        [(conv, "Paris.", "Lyon.")],
        dpo,
        tmp_path / "dpo",
        tracker=None,
        ref_logps=[(0.0, 0.0)],
    )
    dpo_texts = _texts(tok, forward_inputs[:1])
    assert len(dpo_texts) == 2
    prompts["dpo chosen"], prompts["dpo rejected"] = (_prompt_of(t) for t in dpo_texts)

    # SAPO (its own tokenisation of the prompt)
    ex = tokenize_rows([(conv, "Paris.")], tok, SAPOConfig(max_prompt_length=128, max_length=256))[
        0
    ]
    prompts["sapo"] = tok.decode(ex.prompt_ids)

    assert prompts == {name: EXPECTED[kind] for name in prompts}


def test_perplexity_is_scored_after_the_same_prompt(smol_like, forward_inputs):
    from sgpo.models.tinykit import load_tokenizer
    from tasks.ppl_filter import response_perplexities

    tok = load_tokenizer(smol_like)
    response_perplexities(
        str(smol_like), [USER[0]["content"]], ["Paris."], batch_size=1, max_length=128
    )
    [text] = _texts(tok, forward_inputs)
    assert _prompt_of(text) == EXPECTED["default"]
