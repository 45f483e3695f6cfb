"""The evaluation's configuration and AlpacaEval's judge prompt, without a run: the presets load and
their defaults are the official settings (AlpacaEval 2.0, Arena-Hard v0.1's judge settings), and the
official prompt renders as upstream's does. The evaluation flow for real:
tests/e2e/test_eval_stages.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgpo.data.shared import shared_data_dir

DATA = shared_data_dir()


def test_presets_load_and_defaults_are_the_official_settings():
    import yaml

    from sgpo.config import AlpacaEvalConfig, ArenaHardConfig, ConfigError, load_evaluation_config
    from sgpo.evals.arena_hard.judge import load_judge_settings

    tiny = load_evaluation_config()  # eval-tiny is the default
    assert (
        tiny.alpaca_eval.data.path == "bundled:tiny/eval.jsonl"
        and tiny.arena_hard.baseline_answers is None
    )
    real = load_evaluation_config("eval-alpaca-arena", ["model=/ckpt", "model.name=mine"])
    assert (real.model.path, real.model.name) == ("/ckpt", "mine")
    assert (
        real.alpaca_eval.data.path
        == "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval_gpt4_baseline.json"
    )
    for path in (Path(__file__).parents[3] / "configs").glob("eval-*.yaml"):
        assert path.read_text().startswith("# sgpo evaluate "), (
            path
        )  # first line: the command that runs it

    a = AlpacaEvalConfig()
    assert (a.endpoint.model, a.top_logprobs, a.judge_temperature, a.order_seed) == (
        "gpt-4-1106-preview",
        5,
        1.0,
        0,
    )
    assert (a.sampling.temperature, a.sampling.top_p) == (0.7, 0.9)
    settings, version = load_judge_settings(ArenaHardConfig().judge_settings)
    h = ArenaHardConfig()
    assert version.startswith("arena_hard_judge_v0.1@")
    assert (
        settings["judge_model"],
        settings["temperature"],
        settings["max_tokens"],
        settings["number_of_judgment_attempts"],
        settings["baseline_model"],
    ) == (
        h.endpoint.model,
        h.judge_temperature,
        h.judge_max_tokens,
        h.judgment_attempts,
        h.baseline_name,
    )
    assert h.sampling.temperature == 0.0 and (h.bootstrap_rounds, h.seed, h.weight) == (100, 42, 3)
    shared = DATA / "arena_hard" / "judge_config.yaml"
    if shared.is_file():  # our copy is the official file plus a comment header
        assert settings == yaml.safe_load(shared.read_text())

    with pytest.raises(ConfigError, match="did you mean 'top_logprobs'"):
        load_evaluation_config("eval-tiny", ["alpaca_eval.top_logprob=3"])
    with pytest.raises(ConfigError, match="pairwise"):
        load_evaluation_config("eval-tiny", ["pairwise=[{name: a, table: x}, {name: a, table: y}]"])


def test_official_prompt_rendering():
    from sgpo.evals.pairwise import prompt_to_chatml, render_judge_prompt
    from sgpo.prompts import load_prompt

    template = load_prompt("alpaca_eval_clf_v1").text
    text = render_judge_prompt(
        template, instruction="Do {x} {}", output_1="first }{", output_2='second """'
    )
    msgs = prompt_to_chatml(text)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"].startswith(
        "You are a highly efficient assistant, who evaluates and selects"
    )
    user = msgs[1]["content"]
    assert '"instruction": """Do {x} {}""",' in user  # braces in values are kept (no str.format)
    assert '"output": """first }{"""' in user and '"output": """second """"""' in user
    assert user.endswith("## Best Model Identifier")
    # upstream make_prompts replaces the FIRST occurrence of each placeholder, in order: a value that
    # itself contains a later placeholder gets filled there (a quirk reproduced on purpose)
    quirky = prompt_to_chatml(
        render_judge_prompt(template, instruction="{output_1}", output_1="A", output_2="B")
    )[1]
    assert (
        '"instruction": """A""",' in quirky["content"]
        and '"output": """{output_1}"""' in quirky["content"]
    )
