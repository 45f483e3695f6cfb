"""Any TRL training argument can be set (issue 22, item 7): `<section>.trl` passes TRL fields
through, checked against TRL's own dataclass when the config loads (an unknown name fails with the
closest field), in the cache key when set; what sgpo sets itself is named instead."""

from __future__ import annotations

import dataclasses

import pytest

from artifacts.refs import ArtifactRef
from sgpo.config import ConfigError, load_config
from sgpo.config.stages import MANAGED_TRAINING_ARGS
from tasks import get_stage


def _ref(name: str) -> ArtifactRef:
    return ArtifactRef(
        uri=f"file:///x/{name}", kind="table", stage=name, cache_key="k", content_hash=name
    )


def test_a_trl_argument_passes_through_and_enters_the_key():
    plain = load_config("tiny")
    smooth = load_config("tiny", ["dpo.trl={label_smoothing: 0.1}", "sft.trl={optim: adafactor}"])
    assert smooth.dpo.trl == {"label_smoothing": 0.1} and smooth.sft.trl == {"optim": "adafactor"}
    for stage, section, inputs in (
        ("dpo", "dpo", {"start": _ref("a"), "pairs": _ref("b")}),
        ("sft", "sft", {"base": _ref("a"), "data": _ref("b")}),
        ("ref_logps", "dpo", {"reference": _ref("a"), "pairs": _ref("b")}),
    ):
        st = get_stage(stage)
        a, b = (st.coerce(getattr(c, section)) for c in (plain, smooth))
        assert st.cache_key(a, inputs) != st.cache_key(b, inputs), stage
    # unset: the key of every existing configuration is unchanged (no `trl` in the payload)
    assert "trl" not in get_stage("dpo").key_payload(plain.dpo)


def test_unknown_names_fail_with_a_suggestion_and_sgpos_own_fields_are_named():
    with pytest.raises(ConfigError, match="did you mean 'label_smoothing'") as e:
        load_config("tiny", ["dpo.trl={label_smothing: 0.1}"])
    assert "dpo.trl" in str(e.value) and "trl.DPOConfig" in str(e.value)
    with pytest.raises(ConfigError, match="trl.SFTConfig"):  # a DPO argument in an SFT section
        load_config("tiny", ["sft.trl={rpo_alpha: 1.0}"])
    with pytest.raises(ConfigError, match="beta is set by sgpo: use the section's 'beta'"):
        load_config("tiny", ["method=dpo", "dpo_baseline.trl={beta: 0.2}"])
    with pytest.raises(ConfigError, match="per_device_train_batch_size is set by sgpo"):
        load_config("tiny", ["improver_sft.trl={per_device_train_batch_size: 2}"])


def test_sgpos_own_arguments_are_trl_fields():
    """The names sgpo manages are real fields (of the SFT or DPO config), so the list stays true
    (the renamed ones are kept for either transformers: 5 has activation_checkpointing and a
    warmup_steps that takes a ratio, 4 gradient_checkpointing and warmup_ratio)."""
    import trl

    fields = {f.name for c in (trl.SFTConfig, trl.DPOConfig) for f in dataclasses.fields(c)}
    renamed = {"gradient_checkpointing", "activation_checkpointing", "warmup_ratio"}
    assert set(MANAGED_TRAINING_ARGS) - fields <= renamed
