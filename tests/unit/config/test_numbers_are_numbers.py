"""Values that cannot be meant are refused at load time, naming the key (issue 22, item 6): an
infinite or NaN float (`sft.epochs=.inf` trained forever, `timeout_s=.inf` never timed out) and a
boolean where a count is expected (`rounds=true` was read as 1)."""

from __future__ import annotations

import pytest

from sgpo.config import ConfigError, load_config, load_evaluation_config


@pytest.mark.parametrize(
    "override, key",
    [
        ("sft.epochs=.inf", "sft.epochs"),
        ("annotate.endpoint.timeout_s=.inf", "annotate.endpoint.timeout_s"),
        ("dpo.beta=.nan", "dpo.beta"),
        ("judge.endpoint.price_per_1m_prompt_tokens=.inf", "price_per_1m_prompt_tokens"),
        ("sapo.max_grad_norm=.nan", "sapo.max_grad_norm"),
    ],
)
def test_infinite_and_nan_floats_are_refused(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
        load_config("tiny", [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("rounds=true", "rounds"),
        ("data.po.max_rows=true", "data.po.max_rows"),
        ("sample.sampling.n=false", "sample.sampling.n"),
        ("sft.effective_batch_size=true", "sft.effective_batch_size"),
        ("annotate.endpoint.max_retries=false", "annotate.endpoint.max_retries"),
        ("dpo.learning_rate=true", "dpo.learning_rate"),
    ],
)
def test_a_boolean_is_no_count(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: .*a number is expected here, not the boolean"):
        load_config("tiny", [override])


def test_what_is_meant_still_loads():
    cfg = load_config(
        "tiny",
        ["rounds=2", "sft.lora=true", "report_vs_sft=true", "sft.learning_rate=1e-5", "seed=0"],
    )
    assert (cfg.rounds, cfg.sft.lora is not None, cfg.report_vs_sft) == (2, True, True)
    assert cfg.sft.learning_rate == 1e-5
    with pytest.raises(ConfigError, match="finite number"):
        load_evaluation_config("eval-tiny", ["alpaca_eval.endpoint.timeout_s=.inf"])
