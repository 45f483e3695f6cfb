"""pad = eos on a real chat template (SmolLM2: both <|im_end|>): SFT and DPO still train on the
<|im_end|> that ends every answer, so the policy learns to stop. (A collator that masks pad ids
would mask it: labels[labels == pad_id] = -100 is the classic bug.) The batches are the ones
sgpo's own training code builds (train_sft / train_dpo), captured at the loss."""

from __future__ import annotations

import pytest

from sgpo.config import DPOStageConfig, SFTStageConfig
from tests.helpers.smol import build_smol_like

EXAMPLES = [
    ([{"role": "user", "content": "Hi?"}], "Hello."),
    ([{"role": "user", "content": "What is 12 + 30? Answer with the number."}], "42"),
    ([{"role": "user", "content": "Say something longer, please."}], "The quick brown fox jumps."),
]
IM_END = 2  # SmolLM2's <|im_end|>: eos and pad


@pytest.fixture(scope="module")
def smol_like(tmp_path_factory):
    return build_smol_like(tmp_path_factory.mktemp("smol") / "m")


def _capture(monkeypatch, trainer_cls):
    seen = []
    original = trainer_cls.compute_loss

    def compute_loss(self, model, inputs, *a, **k):
        seen.append({k: v.clone() for k, v in inputs.items() if hasattr(v, "clone")})
        return original(self, model, inputs, *a, **k)

    monkeypatch.setattr(trainer_cls, "compute_loss", compute_loss)
    return seen


def _newline(model_dir) -> int:
    from sgpo.models.tinykit import load_tokenizer

    return load_tokenizer(model_dir)("\n", add_special_tokens=False)["input_ids"][0]


def test_sft_trains_on_the_final_im_end(smol_like, tmp_path, monkeypatch):
    from trl import SFTTrainer

    from sgpo.train.trainers import train_sft

    seen = _capture(monkeypatch, SFTTrainer)
    cfg = SFTStageConfig(
        per_device_batch_size=3, effective_batch_size=3, max_steps=1, max_length=128, warmup_ratio=0
    )
    train_sft(str(smol_like), EXAMPLES, cfg, tmp_path / "out", tracker=None)
    batch = seen[0]
    nl = _newline(smol_like)
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        assert (labels[n:] == -100).all() and (ids[n:] == IM_END).all()  # padding (with eos) masked
        answer = [int(t) for t in labels[:n] if t != -100]
        assert answer[-2:] == [IM_END, nl]  # the answer ends <|im_end|> + newline, both trained on
    assert (batch["attention_mask"] == 0).any()  # the rows were padded


def test_dpo_scores_the_final_im_end_of_chosen_and_rejected(smol_like, tmp_path, monkeypatch):
    from trl import DPOTrainer

    from sgpo.train.trainers import train_dpo

    seen = _capture(monkeypatch, DPOTrainer)
    pairs = [(p, c, c + " Really, " + c) for p, c in EXAMPLES]
    cfg = DPOStageConfig(
        per_device_batch_size=3, effective_batch_size=3, max_steps=1, max_length=128, warmup_ratio=0
    )
    train_dpo(
        str(smol_like), pairs, cfg, tmp_path / "out", tracker=None, ref_logps=[(0.0, 0.0)] * 3
    )
    batch = seen[0]
    nl = _newline(smol_like)
    for ids, completion, mask in zip(
        batch["input_ids"], batch["completion_mask"], batch["attention_mask"]
    ):  # chosen rows, then rejected rows
        n = int(mask.sum())
        scored = [int(t) for t, c in zip(ids[:n], completion[:n]) if c]
        assert scored[-2:] == [IM_END, nl]
        assert not completion[n:].any() and (ids[n:] == IM_END).all()


def test_sft_learns_to_stop(smol_like, tmp_path):
    """A few steps of SFT on one answer: the model then writes it and stops at <|im_end|>."""
    from sgpo.config import SamplingConfig
    from sgpo.generate.hf import TransformersGenerator
    from sgpo.train.trainers import train_sft

    cfg = SFTStageConfig(
        per_device_batch_size=1,
        effective_batch_size=1,
        max_steps=40,
        learning_rate=5e-3,
        max_length=64,
        warmup_ratio=0,
        lr_scheduler_type="constant",
    )
    train_sft(str(smol_like), EXAMPLES[:1], cfg, tmp_path / "out", tracker=None)
    gen = TransformersGenerator(str(tmp_path / "out"))
    [[g]] = gen.generate([EXAMPLES[0][0]], SamplingConfig(max_new_tokens=12, temperature=0.0))
    assert (g.text, g.finish_reason) == ("Hello.", "stop")
