"""Recipes end to end on the tiny preset: shared prefixes come from the cache (default suite), every
recipe runs and `sgpo compare` fills its row (slow suite)."""

from __future__ import annotations

import pytest

from sgpo.config import load_config, method_names


def _run(store, method: str, *extra: str):
    from flows.pipeline import sgpo_pipeline

    cfg = load_config(
        "tiny", [f"method={method}", f"store.url={store}", "tracking.enabled=false", *extra]
    )
    return sgpo_pipeline(config=cfg), cfg


@pytest.mark.slow  # two full runs; shared keys: tests/unit/flows/test_recipes.py
def test_two_recipes_on_one_model_share_every_common_stage(tmp_path):
    store = tmp_path / "store"
    spin, _ = _run(store, "spin")
    assert {s.stage: s.status for s in spin.stages}["sft"] == "ran"
    assert "annotate" not in {s.stage for s in spin.stages}  # SPIN pays for no annotation
    dpo, _ = _run(store, "dpo")
    status = {s.stage: s.status for s in dpo.stages}
    assert (
        status["sft"]
        == status["base_model"]
        == status["prepare[sft]"]
        == status["prepare[eval]"]
        == "cached"
    )
    assert status["prepare[prefs]"] == status["dpo"] == status["judge"] == "ran"
    assert dpo.final_policy != spin.final_policy


@pytest.mark.slow
def test_every_recipe_runs_end_to_end_and_fills_its_comparison_row(tmp_path):
    from artifacts.store import ArtifactStore
    from flows.compare import compare_row

    store = tmp_path / "store"
    finals = {}
    for method in method_names():
        report, cfg = _run(store, method)
        finals[method] = report.final_policy
        assert report.judge["n_labelled"] == report.judge["n"] == 16, method
        row = compare_row(method, "tiny", cfg, ArtifactStore(str(store)))
        assert row.status == "done" and row.final_policy == report.final_policy, method
        assert row.judge_win_rate == pytest.approx(report.judge["win_rate"])
    # distinct recipes make distinct policies (sgpo and all four single-flag variants differ)
    assert (
        len({finals[m] for m in ("sgpo", "sgpo-dagger", "sgpo-diamond", "no-ref", "dpo", "spin")})
        == 6
    )
