"""Config loading: presets validate, overrides apply, bad input names the key."""

from __future__ import annotations

import pytest

from sgpo.config import CONFIG_DIR, ConfigError, PipelineConfig, cache_payload, load_config


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("eval-"))
)
def test_every_pipeline_preset_validates_and_starts_with_its_command(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, PipelineConfig)
    first = (CONFIG_DIR / f"{preset}.yaml").read_text().splitlines()[0]
    assert first.startswith("# sgpo run"), f"{preset}.yaml must start with the command that runs it"


def test_paper_presets_carry_paper_hyperparameters():
    for name, sft_epochs in (("qwen2.5-7b", 1), ("llama3-8b", 1), ("qwen2-1.5b", 3)):
        cfg = load_config(name)
        assert cfg.sft.epochs == sft_epochs and cfg.sft.learning_rate == 2e-5
        assert cfg.sft.effective_batch_size == 128 and cfg.sft.max_length == 2048
        assert cfg.sft.lr_scheduler_type == "cosine"
        assert cfg.improver_sft.epochs == 3
        assert cfg.dpo.learning_rate == 5e-7 and cfg.dpo.epochs == 1
        assert (cfg.sample.sampling.temperature, cfg.sample.sampling.top_p) == (0.7, 0.9)
        assert (
            cfg.data.sft.path == "HuggingFaceH4/ultrachat_200k"
            and cfg.data.sft.split == "train_sft"
        )
        assert cfg.data.improver.path == "argilla/dpo-mix-7k"
        assert (
            cfg.data.po.path == "allenai/ultrafeedback_binarized_cleaned"
            and cfg.data.po.split == "train_sft"
        )
        assert not cfg.model.trust_remote_code


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        "tiny", ["dpo.beta=0.25", "rounds=2", "sample.sampling.n=3", "shared_improver=false"]
    )
    assert cfg.dpo.beta == 0.25 and cfg.rounds == 2 and cfg.sample.sampling.n == 3
    assert cfg.shared_improver is False


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["sft.learnig_rate=1e-5"])
    assert "sft.learnig_rate" in str(e.value) and "learning_rate" in str(e.value)


def test_wrong_value_type_is_named():
    with pytest.raises(ConfigError, match=r"dpo\.beta"):
        load_config("tiny", ["dpo.beta=abc"])


def test_bad_override_syntax_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["dpo.beta"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-preset")


def test_broken_yaml_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_runtime_fields_stay_out_of_cache_payload():
    a = load_config("tiny")
    b = load_config(
        "tiny",
        [
            "annotate.endpoint.base_url=http://127.0.0.1:1/v1",
            "annotate.endpoint.max_concurrency=64",
            "sample.sampling.batch_size=3",
        ],
    )
    assert cache_payload(a.annotate) == cache_payload(b.annotate)
    assert cache_payload(a.sample) == cache_payload(b.sample)
    c = load_config("tiny", ["annotate.endpoint.model=other-model"])
    assert cache_payload(a.annotate) != cache_payload(c.annotate)


# --------------------------------------------------------------------------- ranges (issue 12, finding 1)


@pytest.mark.parametrize(
    "override",
    [
        "sample.sampling.temperature=5",
        "pairs.sampling.temperature=5",
        "judge.sampling.temperature=-0.1",
        "annotate.temperature=5",
        "annotate.top_p=0",
        "annotate.top_p=1.5",
        "judge.judge_temperature=2.5",
        "dpo.beta=0",
        "dpo.beta=1000",
        "sft.learning_rate=2e5",
        "dpo.learning_rate=1",
        "improver_sft.warmup_ratio=1",
        "sft.weight_decay=-0.1",
        "sample.sampling.max_new_tokens=0",
        "sample.sampling.n=0",
        "annotate.max_tokens=0",
        "sft.max_length=0",
        "model.tiny.hidden_size=0",
    ],
)
def test_out_of_range_values_fail_at_load_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert f"  {key}: " in str(e.value)


def test_range_edges_are_accepted():
    cfg = load_config(
        "tiny",
        [
            "sample.sampling.temperature=2",
            "annotate.temperature=0",
            "annotate.top_p=1",
            "dpo.beta=0.01",
            "sft.warmup_ratio=0",
            "sft.learning_rate=0.5",
        ],
    )
    assert (
        cfg.sample.sampling.temperature == 2
        and cfg.annotate.temperature == 0
        and cfg.annotate.top_p == 1
    )


@pytest.mark.parametrize(
    "override",
    [
        "alpaca_eval.sampling.temperature=5",
        "arena_hard.judge_temperature=3",
        "alpaca_eval.judge_temperature=-1",
        "arena_hard.sampling.top_p=0",
    ],
)
def test_evaluation_config_ranges(override):
    from sgpo.config import load_evaluation_config

    with pytest.raises(ConfigError) as e:
        load_evaluation_config("eval-tiny", [override])
    assert f"  {override.split('=')[0]}: " in str(e.value)


# --------------------------------------------------------------------------- unreadable files (finding 2)


@pytest.mark.parametrize("what", ["directory", "binary", "latin-1"])
def test_a_config_that_is_not_text_is_a_clear_error(tmp_path, what):
    from sgpo.config import load_evaluation_config

    path = tmp_path / "cfg.yaml"
    if what == "directory":
        path.mkdir()
    elif what == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8")
    else:
        path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    for load in (load_config, load_evaluation_config):
        with pytest.raises(ConfigError) as e:
            load(str(path))
        assert str(path) in str(e.value)
        assert ("directory" if what == "directory" else "not a UTF-8 text file") in str(e.value)
