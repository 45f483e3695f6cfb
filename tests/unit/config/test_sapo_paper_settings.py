"""The SAPO presets against the SAPO paper's stated settings (Sec. 5.1 "Training details", Appendix B)
and the published scripts (scripts/sapo_*.sh, configs/*.yaml of github.com/yinyueqin/SAPO): every
number below is read from there, not from the presets."""

from __future__ import annotations

import pytest

from flows.pipeline import plan, recipe_section
from sgpo.config import load_config

DPO_PRESETS = ("sapo-llama3-8b", "sapo-mistral-7b")
ORPO_PRESETS = ("sapo-orpo-llama3-8b", "sapo-orpo-mistral-7b")
CAPYBARA = "argilla/distilabel-capybara-dpo-7k-binarized"


def _dag(preset: str, method: str) -> tuple[dict[str, dict[str, str]], str]:
    steps, final = plan(load_config(preset, [f"method={method}"]))
    return {s.label: s.inputs for s in steps}, final


@pytest.mark.parametrize("preset", DPO_PRESETS + ORPO_PRESETS)
def test_sapo_section_is_the_papers(preset):
    s = load_config(preset).sapo
    # 4 epochs, prompt 1792 / total 2048, |B| 256, buffer 2000, alpha 0.5; 8 processes x 8 rows
    assert (s.epochs, s.max_prompt_length, s.max_length, s.segment_length) == (4, 1792, 2048, 256)
    assert (s.buffer_capacity, s.ema_alpha, s.batch_size * s.buffers) == (2000, 0.5, 64)
    assert (s.dpo.beta, s.dpo.learning_rate, s.dpo.optimizer) == (0.1, 5e-7, "rmsprop")
    assert (s.orpo.lam, s.orpo.learning_rate) == (0.05, 5e-6)
    assert (s.temperature, s.top_p, s.top_k) == (0.7, 0.95, 50)  # the published generate() call
    assert (s.reference, s.reference_update_every) == ("ema", 108)


@pytest.mark.parametrize("preset", DPO_PRESETS + ORPO_PRESETS)
def test_every_method_reads_distilabel_capybara(preset):
    cfg = load_config(preset)
    assert {cfg.data.sapo.path, cfg.data.po.path, cfg.data.prefs.path} == {CAPYBARA}
    assert cfg.data.prefs.preference_pairs  # DPO / ORPO: chosen and rejected


def test_dpo_based_starts_llama_sft_on_deita_mistral_the_zephyr_sft():
    llama = load_config("sapo-llama3-8b")
    assert llama.model.name_or_path == "meta-llama/Meta-Llama-3-8B"
    assert llama.data.sft.path == "HuggingFaceH4/deita-10k-v0-sft"
    assert (llama.sft.learning_rate, llama.sft.epochs, llama.sft.lr_scheduler_type) == (
        2e-5,
        3,
        "cosine",
    )
    for method in ("sapo-dpo", "dpo", "spin"):
        dag, _ = _dag("sapo-llama3-8b", method)
        assert "sft" in dag, method  # llama-3-8b-sft, made here
        dag, _ = _dag("sapo-mistral-7b", method)
        assert "sft" not in dag, method  # wandb/mistral-7b-zephyr-sft is already SFT-ed
    assert load_config("sapo-mistral-7b").model.name_or_path == "wandb/mistral-7b-zephyr-sft"


@pytest.mark.parametrize(
    "preset, base, template",
    [
        ("sapo-orpo-llama3-8b", "meta-llama/Meta-Llama-3-8B", "chatml"),
        ("sapo-orpo-mistral-7b", "mistralai/Mistral-7B-v0.1", "zephyr"),
    ],
)
def test_orpo_based_methods_start_from_the_raw_base_with_the_papers_template(
    preset, base, template
):
    cfg = load_config(preset)
    assert (cfg.model.name_or_path, cfg.model.chat_template, cfg.method) == (
        base,
        template,
        "sapo-orpo",
    )
    for method in ("sapo-orpo", "orpo", "spin-orpo"):
        dag, _ = _dag(preset, method)
        assert "sft" not in dag, method
    assert _dag(preset, "sapo-orpo")[0]["sapo"]["policy"] == "base_model"
    assert _dag(preset, "orpo")[0]["orpo"] == {"start": "base_model", "pairs": "prepare[prefs]"}


@pytest.mark.parametrize("preset", DPO_PRESETS)
def test_dpo_baseline(preset):
    # beta 0.1, lr 5e-7, RMSprop, three epochs, on the Capybara pairs, from the SFT model
    d = load_config(preset, ["method=dpo"]).dpo_baseline
    assert (d.beta, d.learning_rate, d.optimizer, d.epochs) == (0.1, 5e-7, "rmsprop", 3)
    assert _dag(preset, "dpo")[0]["dpo"]["pairs"] == "prepare[prefs]"


@pytest.mark.parametrize(
    "preset, epochs", [("sapo-orpo-llama3-8b", 4), ("sapo-orpo-mistral-7b", 3)]
)
def test_orpo_baseline(preset, epochs):
    # lambda 0.05, lr 5e-6, AdamW; three epochs on Mistral, four on Llama
    o = load_config(preset, ["method=orpo"]).orpo
    assert (o.lam, o.learning_rate, o.epochs) == (0.05, 5e-6, epochs)
    assert o.optimizer.startswith("adamw")


@pytest.mark.parametrize("preset", DPO_PRESETS)
def test_spin_dpo_schedule(preset):
    # four iterations of three epochs; lr 5e-7 for the first two, 1e-7 for the other two; beta
    # raised to 5.0 in the final one; configured as the DPO baseline (RMSprop)
    cfg = load_config(preset, ["method=spin"])
    assert cfg.spin.iterations == 4
    its = [recipe_section(cfg, f"spin[{t}]") for t in (1, 2, 3, 4)]
    assert [c.learning_rate for c in its] == [5e-7, 5e-7, 1e-7, 1e-7]
    assert [c.beta for c in its] == [0.1, 0.1, 0.1, 5.0]
    assert {(c.epochs, c.optimizer) for c in its} == {(3, "rmsprop")}
    dag, final = _dag(preset, "spin")
    assert final == "dpo[4]" and dag["pairs[1]"]["data"] == "prepare[po]"


@pytest.mark.parametrize("preset", ORPO_PRESETS)
def test_spin_orpo_schedule(preset):
    cfg = load_config(preset, ["method=spin-orpo"])
    its = [recipe_section(cfg, f"spin_orpo[{t}]") for t in (1, 2, 3, 4)]
    assert [c.learning_rate for c in its] == [5e-7, 5e-7, 1e-7, 1e-7]
    assert {c.epochs for c in its} == {3}
    dag, final = _dag(preset, "spin-orpo")
    assert final == "orpo[4]"
    assert [dag[f"orpo[{t}]"]["start"] for t in (1, 2, 3, 4)] == [
        "base_model",
        "orpo[1]",
        "orpo[2]",
        "orpo[3]",
    ]
    assert dag["pairs[2]"]["policy"] == "orpo[1]"  # rejected = the answers of the policy trained


def test_ablation_recipes_are_the_papers_tables():
    def sapo(preset, method):
        return load_config(preset, [f"method={method}"]).sapo

    # Table 4 (DPO-based): fix-ref, policy-ref, ema-ref
    assert sapo("sapo-llama3-8b", "sapo-dpo-fix-ref").reference == "fixed"
    assert sapo("sapo-llama3-8b", "sapo-dpo-policy-ref").reference == "policy"
    assert sapo("sapo-llama3-8b", "sapo-dpo").reference == "ema"
    # Table 3 (Llama ORPO): on-policy, no segment; Table 5: rejected 1/4/8, segment 64/128/256
    p = "sapo-orpo-llama3-8b"
    assert sapo(p, "sapo-orpo-on-policy").rejected_by == "policy"
    assert sapo(p, "sapo-orpo-no-segment").segment is False
    assert [sapo(p, f"sapo-orpo-rejected-{n}").rejected_per_prompt for n in (4, 8)] == [4, 8]
    assert [sapo(p, f"sapo-orpo-segment-{n}").segment_length for n in (64, 128)] == [64, 128]
    assert {sapo(p, m).loss for m in ("sapo-orpo-on-policy", "sapo-orpo-segment-64")} == {"orpo"}
