"""The SFT unit is a choice (issue 21, item 6): one example per dialogue with every answer a target (the
SGPO paper's "1 epoch on UltraChat-200K" counts dialogues: the presets' choice), or one example per
answer; combining per-answer examples with every-answer targets is refused."""

from __future__ import annotations

import pytest

from sgpo.config import ConfigError, load_config


@pytest.mark.parametrize("preset", ["qwen2.5-7b", "llama3-8b", "qwen2-1.5b", "sapo-llama3-8b"])
def test_the_paper_presets_train_one_example_per_dialogue(preset):
    cfg = load_config(preset)
    assert (cfg.data.sft.turns, cfg.sft.assistant_turns) == ("last", "all")


def test_per_answer_examples_remain_selectable():
    cfg = load_config("llama3-8b", ["data.sft.turns=all", "sft.assistant_turns=final"])
    assert (cfg.data.sft.turns, cfg.sft.assistant_turns) == ("all", "final")


def test_learning_earlier_answers_again_in_every_later_example_is_refused():
    with pytest.raises(ConfigError, match="data.sft.turns=all makes one example per answer"):
        load_config("llama3-8b", ["data.sft.turns=all"])
