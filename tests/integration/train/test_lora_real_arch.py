"""LoRA on a real architecture (issue 20): `lora=true` (target_modules all-linear) on SmolLM2's
Llama layout adapts exactly q/k/v/o_proj and gate/up/down_proj of every layer (never the tied
LM head), trains them, and publishes a merged checkpoint with the base model's tensors."""

from __future__ import annotations

import pytest

from sgpo.config import LoRAConfig, SFTStageConfig
from tests.helpers.smol import build_smol_like

SMOLLM2_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def smol_like(tmp_path_factory):
    pytest.importorskip("peft")
    return build_smol_like(tmp_path_factory.mktemp("smol") / "m")


def test_all_linear_adapts_the_seven_projections_of_every_layer(smol_like):
    from sgpo.train.checkpoints import load_model
    from sgpo.train.lora import wrap_lora

    model = wrap_lora(load_model(str(smol_like)), LoRAConfig())
    targeted = set(model.targeted_module_names)
    layers = model.base_model.model.config.num_hidden_layers
    assert {name.rsplit(".", 1)[-1] for name in targeted} == SMOLLM2_LINEAR
    assert len(targeted) == 7 * layers and not any("lm_head" in n for n in targeted)
    explicit = wrap_lora(
        load_model(str(smol_like)), LoRAConfig(target_modules=sorted(SMOLLM2_LINEAR))
    )
    assert set(explicit.targeted_module_names) == targeted


def test_lora_sft_trains_and_publishes_a_merged_checkpoint(smol_like, tmp_path):
    from safetensors.torch import load_file

    from sgpo.train.trainers import train_sft

    cfg = SFTStageConfig(
        per_device_batch_size=2,
        effective_batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        max_length=64,
        warmup_ratio=0,
        lora=True,
    )
    examples = [
        ([{"role": "user", "content": "Hi?"}], "Hello."),
        ([{"role": "user", "content": "Bye?"}], "Goodbye."),
    ]
    metrics = train_sft(str(smol_like), examples, cfg, tmp_path / "out", tracker=None)
    assert metrics["train_loss"] > 0
    base = load_file(smol_like / "model.safetensors")
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged.keys() == base.keys()  # a plain checkpoint: no LoRA tensors left
    changed = {k for k in base if not (merged[k] == base[k]).all()}
    assert {
        k.split(".")[-2] for k in changed
    } == SMOLLM2_LINEAR  # only the adapted projections moved
