"""What the recipes rely on, on the tiny model or a local server: a base model without a chat
template needs one configured (the tiny tokenizer), and the tiny preset's rule judge, served and
asked through the real pairwise judge, tells two policies apart whatever the shown order. The
recipes and their DAGs: tests/unit/flows/test_recipes.py."""

from __future__ import annotations

import pytest


def test_a_base_model_without_chat_template_needs_one_configured(tiny_model_dir):
    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.trainers import NAMED_CHAT_TEMPLATES, TrainingDataError, set_chat_template

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(
        TrainingDataError, match=r"set sft.chat_template, e.g. sft.chat_template=chatml"
    ):
        set_chat_template(tok, None)
    set_chat_template(tok, "chatml")
    assert tok.chat_template == NAMED_CHAT_TEMPLATES["chatml"]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert (
        text
        == f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>{tok.eos_token}\n"
    )


def test_two_different_policies_get_different_win_rates_and_the_shown_order_does_not_flip_them(
    tmp_path,
):
    """Through the real judge (sgpo.evals.pairwise) and an embedded-style server answering with the rule."""
    from artifacts.store import ArtifactStore
    from sgpo.config import PairJudgeConfig
    from sgpo.evals.alpaca_eval import win_rate_metrics
    from sgpo.evals.pairwise import PairJudge, judge_pairs
    from sgpo.llm.rule_judge import RuleJudgeBackend
    from sgpo.llm.server import build_app, running_server

    prompts = [f"Describe topic number {i} in a few words" for i in range(12)]
    baseline = [f"topic {i} is a subject people describe" for i in range(12)]
    careful = [
        f"Topic number {i} can be described in a few clear and distinct words here"
        for i in range(12)
    ]
    looping = ["the the the the the" for _ in range(12)]
    store = ArtifactStore(str(tmp_path))

    with running_server(build_app(RuleJudgeBackend(fallback=None), model_name="rule")) as url:

        def win_rate(answers, order_seed):
            cfg = PairJudgeConfig.model_validate(
                {
                    "endpoint": {"base_url": url, "model": "rule"},
                    "top_logprobs": 2,
                    "order_seed": order_seed,
                }
            )
            results, _ = judge_pairs(
                list(zip(prompts, baseline, answers)), PairJudge.from_config(cfg), store=store
            )
            return win_rate_metrics([r["preference"] for r in results])["win_rate"], [
                r["is_switched_outputs"] for r in results
            ]

        careful_wr, order0 = win_rate(careful, 0)
        looping_wr, _ = win_rate(looping, 0)
        careful_swapped, order1 = win_rate(careful, 1)
    assert (
        careful_wr > 90 and looping_wr < 10
    )  # the policies differ, and the rule says which is better
    assert order0 != order1 and careful_swapped == pytest.approx(
        careful_wr
    )  # other display order, same result
