"""Benchmark glue against the real components: lm-eval's own IFEval scorer on GPT-4's 541 published
responses vs the paper's accuracies (8 seeds), lm-eval's task index naming an unknown task, and the
chat-template check on the tiny model."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from sgpo.data.shared import shared_data_dir
from tests.helpers.data import need

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DATA = shared_data_dir()

IFEVAL = DATA / "ifeval"


# IFEval paper, GPT-4 (data/ifeval/README.md)
PAPER_IFEVAL = {
    "prompt_level_strict_acc": 76.89,
    "prompt_level_loose_acc": 79.30,
    "inst_level_strict_acc": 83.57,
    "inst_level_loose_acc": 85.37,
}


def _ifeval_scores(seed: int) -> dict[str, float]:
    from langdetect import DetectorFactory

    from sgpo.evals.lm_harness import ifeval_score

    docs = [json.loads(line) for line in (IFEVAL / "input_data.jsonl").read_text().splitlines()]
    responses = [
        json.loads(line)["response"]
        for line in (IFEVAL / "input_response_data_gpt4_20231107_145030.jsonl")
        .read_text()
        .splitlines()
    ]
    DetectorFactory.seed = (
        seed  # the scorer is random: langdetect, and a random letter for non-letter "letters"
    )
    random.seed(seed)
    return ifeval_score(
        docs, responses
    )  # paired by line order (key 2785 is worded differently, see the README)


def test_ifeval_gpt4_published_responses_reproduce_the_paper():
    """lm-eval's IFEval scorer (not ours) on GPT-4's 541 published responses.

    The scorer itself is random on a few prompts (langdetect; `letter_frequency` draws a random
    letter when the kwarg is not a letter, e.g. "!" in key 1129), so each seed gives a slightly
    different number. Measured over seeds 0-7: prompt strict 415-417 of 541 (paper 76.89 = 416),
    instruction strict 696-698 of 834 (paper 83.57 = 697), prompt loose 430-431 (paper 429),
    instruction loose 713-714 (paper 712). Asserted: strict accuracies bracketed by the seeds,
    every number of every seed within 0.4 points (about 2 prompts / 3 instructions) of the paper."""
    need(IFEVAL / "input_data.jsonl", IFEVAL / "input_response_data_gpt4_20231107_145030.jsonl")
    runs = [_ifeval_scores(seed) for seed in range(8)]
    assert all(r["n"] == 541 for r in runs)
    for metric, paper in PAPER_IFEVAL.items():
        values = [r[metric] for r in runs]
        assert max(abs(v - paper) for v in values) < 0.4, (metric, values)
        if "strict" in metric:
            assert min(values) - 1e-9 <= paper + 0.005 and paper - 0.005 <= max(values) + 1e-9, (
                metric,
                values,
            )


def test_missing_chat_template_fails_with_the_fix(tiny_model_dir, tmp_path):
    from sgpo.generate import ChatTemplateMissing, require_chat_template

    ckpt = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, ckpt)
    (ckpt / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    require_chat_template(str(tiny_model_dir))  # the tiny model has one
    with pytest.raises(ChatTemplateMissing, match=r"tok.chat_template = .*save_pretrained"):
        require_chat_template(str(ckpt))


def test_unknown_lm_eval_task_fails_by_name():
    from sgpo.evals.lm_harness import LmEvalTaskError, check_task_names

    with pytest.raises(LmEvalTaskError, match=r"'arc_chalenge' \(did you mean arc_challenge"):
        check_task_names(["arc_challenge", "arc_chalenge"])
