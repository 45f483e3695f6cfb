"""The `smol` preset (SmolLM2-135M-Instruct on 2 CPU cores) and its evaluation preset `eval-smol`:
learning rates of a pretrained model, not the tiny preset's (issue 20, failure 4: one SFT step at
1e-3 wrecked SmolLM2, which then answered nothing), every recipe composes with it, its evaluation
covers every benchmark."""

from __future__ import annotations

from sgpo.config import (
    CONFIG_DIR,
    TrainConfig,
    load_config,
    load_evaluation_config,
    method_names,
)


def _learning_rates(cfg) -> dict[str, float]:
    rates = {
        name: getattr(cfg, name).learning_rate
        for name in type(cfg).model_fields
        if isinstance(getattr(cfg, name), TrainConfig)
    }
    rates["sapo.dpo"], rates["sapo.orpo"] = cfg.sapo.dpo.learning_rate, cfg.sapo.orpo.learning_rate
    return rates


def test_smol_trains_at_a_pretrained_models_learning_rates():
    smol, tiny = _learning_rates(load_config("smol")), _learning_rates(load_config("tiny"))
    assert set(smol) >= {"sft", "improver_sft", "dpo", "dpo_baseline", "spin", "sft_continued"}
    assert all(1e-7 <= lr <= 5e-5 for lr in smol.values()), smol
    assert tiny["sft"] >= 1e-3  # what wrecked SmolLM2: the tiny preset's, made for a random model
    cfg = load_config("smol")
    assert cfg.model.name_or_path == "packaged:SmolLM2-135M-Instruct"
    assert cfg.embedded_llm.judge == "model" and cfg.embedded_llm.annotator == "model"


def test_smol_starts_with_its_command_and_every_recipe_composes_with_it():
    assert (CONFIG_DIR / "smol.yaml").read_text().startswith("# sgpo run smol")
    for method in method_names():
        assert load_config("smol", [f"method={method}"]).method == method


def test_eval_smol_runs_the_benchmarks_on_small_subsets():
    assert (CONFIG_DIR / "eval-smol.yaml").read_text().startswith("# sgpo evaluate eval-smol")
    cfg = load_evaluation_config("eval-smol")
    assert cfg.model.path == "packaged:SmolLM2-135M-Instruct"
    assert all(
        (b.enabled, b.max_rows is not None) == (True, True)
        for b in (cfg.alpaca_eval, cfg.arena_hard)
    )
    # MT-Bench: sized, but off by default (a 135M judge writes no [[rating]]; its stage refuses)
    assert cfg.mt_bench.max_rows is not None and not cfg.mt_bench.enabled
    assert (
        cfg.lm_eval.enabled
        and cfg.lm_eval.limit
        and [t.name for t in cfg.lm_eval.tasks] == ["ifeval"]
    )
