"""The testbed (docs/testbed.md) for real: the oracle annotator and verifier judge answer the real
prompts over the real server and clients, and a fast regression of the method's effect on a tiny
model (tests/helpers/testbed_probe.py). Tasks, score and the preset's DAG:
tests/unit/data/test_testbed.py."""

from __future__ import annotations

from sgpo.data.testbed import HABIT


def test_oracle_and_verifier_answer_the_real_prompts_over_http(tmp_path):
    """annotate (the stage's own request builder) and the pairwise judge, through the openai client."""
    from artifacts.store import ArtifactStore
    from sgpo.config import AnnotateStageConfig, PairJudgeConfig
    from sgpo.evals.pairwise import PairJudge, judge_pairs
    from sgpo.llm.client import call_all
    from sgpo.llm.oracle import TestbedBackend
    from sgpo.llm.server import build_app, running_server
    from tasks.annotate import build_requests

    class NoModel:
        def chat(self, *a, **k):
            raise AssertionError("the oracle should have answered")

    x = "Reverse the list: 1 2 3 4"
    rows = [{"prompt": x, "reference": "4 3 2 1", "policy": "4 3 9 1" + HABIT}]
    with running_server(
        build_app(TestbedBackend(NoModel(), judge=True, annotator=True), model_name="tb")
    ) as url:
        cfg = AnnotateStageConfig.model_validate(
            {"endpoint": {"base_url": url, "model": "tb", "api_key_env": "NONE"}}
        )
        res = call_all(
            build_requests(rows, cfg),
            cfg.endpoint,
            journal_url=str(tmp_path / "calls"),
            namespace="t",
        )
        texts = {r.key: r.text for r in res.records}
        assert texts == {"0/imp": "4 3 2 1", "0/ext": "4 3 2 1"}
        jcfg = PairJudgeConfig.model_validate(
            {"endpoint": {"base_url": url, "model": "tb", "api_key_env": "NONE"}}
        )
        pairs = [
            (x, "4 3 2 1", "4 3 2 1" + HABIT),
            (x, "4 3 2 9", "4 3 2 1"),
            (x, "1 2 3 4", "4 3 2 1"),
        ]
        results, _ = judge_pairs(
            pairs, PairJudge.from_config(jcfg), store=ArtifactStore(str(tmp_path / "store"))
        )
    prefs = [r["preference"] for r in results]
    assert (
        prefs[0] < 1.05 and prefs[1] > 1.85 and prefs[2] > 1.99
    )  # 1 = the baseline (first) better


def test_the_method_effect_regression():
    """Fast regression of the method's effect (tests/helpers/testbed_probe.py; margins and noise in docs/testbed.md,
    "Fast regression"): one round of DPO+NLL with the oracle's minimal fixes of the policy's samples as
    chosen removes pi_sft's verbosity habit, and the same pairs with chosen and rejected swapped (a
    wiring bug) score clearly below the correct wiring. Measured on seeds 0/1/2: habit 0.30/0.25/0.14 ->
    0.00 with the method; score method - swapped = +0.043/+0.034/+0.041 (SE of the difference ~0.012)."""
    from tests.helpers.testbed_probe import probe

    r = probe(seed=0, variants=("method", "swapped"))
    sft, good, bad = r["sft"], r["method"], r["swapped"]
    assert good["habit_rate"] < sft["habit_rate"] - 0.10, r
    assert good["mean_quality"] > bad["mean_quality"] + 0.015, r
