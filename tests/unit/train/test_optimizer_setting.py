"""A training section's `optimizer` reaches transformers: the SAPO paper's DPO and SPIN-DPO use RMSprop
(Sec. 5.1), its ORPO AdamW; unset, transformers' default optimiser stays (existing keys unchanged)."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments

from sgpo.config import DPOStageConfig, ORPOStageConfig, load_config
from sgpo.train.trainers import common_args


def _optimizer_class(cfg, tmp_path) -> type:
    args = TrainingArguments(**common_args(cfg, str(tmp_path)))
    return Trainer.get_optimizer_cls_and_kwargs(args)[0]


def test_rmsprop_when_named(tmp_path):
    cfg = DPOStageConfig(optimizer="rmsprop", per_device_batch_size=8, effective_batch_size=8)
    assert _optimizer_class(cfg, tmp_path) is torch.optim.RMSprop


def test_the_presets_spin_and_dpo_baselines_train_with_rmsprop(tmp_path):
    cfg = load_config("sapo-llama3-8b", ["method=spin"])
    for section in (cfg.spin.for_iteration(4), cfg.dpo_baseline):
        section = section.model_copy(update={"per_device_batch_size": 8, "effective_batch_size": 8})
        assert _optimizer_class(section, tmp_path) is torch.optim.RMSprop


def test_unset_is_transformers_default(tmp_path):
    cfg = DPOStageConfig(per_device_batch_size=8, effective_batch_size=8)
    default = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(str(tmp_path)))[0]
    assert _optimizer_class(cfg, tmp_path) is default
    orpo = ORPOStageConfig(optimizer="adamw_torch", per_device_batch_size=8, effective_batch_size=8)
    assert _optimizer_class(orpo, tmp_path) is torch.optim.AdamW
