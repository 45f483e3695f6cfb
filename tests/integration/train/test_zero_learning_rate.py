"""The zero-learning-rate refusal (tests/unit/train/test_zero_learning_rate.py) inside a real
trainer: the training stages' callback stops Trainer.train() before its first step."""

from __future__ import annotations

import pytest

from sgpo.train.callbacks import ZeroLearningRateError


def test_the_refusal_reaches_a_real_trainer_before_its_first_step(tiny_model_dir, tmp_path):
    """4 rows at effective batch 4 are one step, and a 10% warmup runs it at lr 0: refused before
    the step, the output folder never written; with no warmup the same run trains."""
    from sgpo.config import SFTStageConfig
    from sgpo.train.trainers import train_sft

    examples = [([{"role": "user", "content": f"q{i}"}], f"a{i}") for i in range(4)]
    cfg = SFTStageConfig(
        per_device_batch_size=4, effective_batch_size=4, epochs=1, max_length=32, warmup_ratio=0.1
    )
    with pytest.raises(ZeroLearningRateError, match="all 1 optimizer step"):
        train_sft(str(tiny_model_dir), examples, cfg, tmp_path / "out", tracker=None)
    assert not (tmp_path / "out").exists()
    cfg.warmup_ratio = 0.0
    metrics = train_sft(str(tiny_model_dir), examples, cfg, tmp_path / "out", tracker=None)
    assert metrics["train_loss"] > 0 and (tmp_path / "out" / "config.json").exists()
