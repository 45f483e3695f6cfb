"""Every override is read or rejected (issue 22, item 1; issue 23, item 2).

`sgpo run tiny method=dpo dpo.beta=0.2` ran with exit 0 and beta 0.1: the DPO baseline reads
`dpo_baseline`. Now a key the user set in a section that no step of the recipe reads fails before
any work, naming the section the recipe reads instead, from the command line, a YAML file, the UI
form and `--params` alike; and the form's `method` runs its recipe.

The expected reads below are the recipes' specification, written out by hand (docs/methods.md),
not derived from the plan under test.
"""

from __future__ import annotations

import pytest

from flows.pipeline import check_settings_are_read, plan
from sgpo.config import ConfigError, PipelineConfig, load_config, method_names
from sgpo.config.loading import format_override
from sgpo.config.pipeline import settle_config

ALWAYS = {
    "name",
    "method",
    "algorithm",
    "seed",
    "model",
    "start",
    "report_vs_sft",
    "checks",
    "judge",
    "store",
    "tracking",
    "embedded_llm",
    "execution",
    "hardware",
    "threads",
    "source",
}
# algorithm -> (sections its steps read, data roles it reads)
READS = {
    "sgpo": (
        {
            "sft",
            "sample",
            "annotate",
            "ppl_filter",
            "improver_sft",
            "pairs",
            "dpo",
            "shared_improver",
            "rounds",
        },
        {"sft", "improver", "po", "eval"},
    ),
    "dpo": ({"sft", "dpo_baseline"}, {"sft", "prefs", "eval"}),
    "spin": ({"sft", "pairs", "spin"}, {"sft", "po", "eval"}),
    "orpo": ({"sft", "orpo"}, {"sft", "prefs", "eval"}),
    "spin_orpo": ({"sft", "pairs", "spin_orpo"}, {"sft", "po", "eval"}),
    "sapo": ({"sft", "sapo"}, {"sft", "sapo", "eval"}),
    "sft": ({"sft"}, {"sft", "eval"}),
    "sft_continued": ({"sft", "sft_continued"}, {"sft", "po", "eval"}),
}
# where a DPO-like step of each algorithm reads its preference-optimisation settings
PO_SECTION = {
    "sgpo": "dpo",
    "dpo": "dpo_baseline",
    "spin": "spin",
    "orpo": "orpo",
    "spin_orpo": "spin_orpo",
    "sapo": "sapo",
}


def _a_leaf(tree: dict, prefix: str) -> tuple[str, object]:
    """The first leaf key under `prefix` and its value (the section itself when it is a scalar)."""
    value = tree
    key = prefix
    while isinstance(value, dict) and value:
        name = next(iter(value))
        key, value = f"{key}.{name}", value[name]
    return key, value


def _settings(cfg: PipelineConfig) -> list[tuple[str, str, object]]:
    """(what it is, a leaf key, its value) for every top-level setting, data role and SAPO loss part."""
    dump = cfg.model_dump(mode="json")
    out = []
    for name in PipelineConfig.model_fields:
        if name == "data":
            for role, spec in dump["data"].items():
                if spec is not None:
                    out.append((f"data.{role}", *_a_leaf(spec, f"data.{role}")))
        elif name == "sapo":
            for part in ("dpo", "orpo"):
                out.append((f"sapo.{part}", *_a_leaf(dump["sapo"][part], f"sapo.{part}")))
            out.append(("sapo", "sapo.epochs", dump["sapo"]["epochs"]))
        elif name != "source":
            out.append((name, *_a_leaf(dump[name], name)))
    return out


@pytest.mark.parametrize("method", method_names())
def test_every_recipe_reads_or_rejects_every_setting(method):
    base = load_config("tiny", [f"method={method}"])
    sections, roles = READS[base.algorithm]
    if base.start == "base":  # pi_sft is the base model itself: no sft stage, no SFT data
        sections, roles = sections - {"sft"}, roles - {"sft"}
    checked = 0
    for what, key, value in _settings(base):
        if what.startswith("data."):
            read = what[5:] in roles
        elif what.startswith("sapo."):
            read = base.algorithm == "sapo" and what == f"sapo.{base.sapo.loss}"
        else:
            read = what in ALWAYS or what in sections
        cfg = load_config("tiny", [f"method={method}", format_override(key, value)])
        if read:
            check_settings_are_read(cfg)  # set to the same value, but set: it is read
        else:
            with pytest.raises(ConfigError, match="never reads") as e:
                check_settings_are_read(cfg)
            assert f"  {key}: " in str(e.value)
            top = what.split(".")[0]
            if top in PO_SECTION.values() and base.algorithm in PO_SECTION:
                # (SAPO: its own fields in sapo, the loss's in sapo.dpo / sapo.orpo)
                reads = PO_SECTION[base.algorithm]
                assert f"from {reads}, not {top}" in str(e.value) or (
                    reads == "sapo"
                    and f"from sapo.{base.sapo.loss}, not {top}" in str(e.value)
                    or "sapo.loss is" in str(e.value)
                )
        checked += 1
    assert checked >= len(PipelineConfig.model_fields) + 6  # every section, data role, SAPO part


def test_the_reported_example_fails_naming_the_section_read_instead():
    with pytest.raises(ConfigError) as e:
        check_settings_are_read(load_config("tiny", ["method=dpo", "dpo.beta=0.2"]))
    assert (
        "dpo.beta: method dpo (algorithm dpo) reads its preference-optimisation settings from "
        "dpo_baseline, not dpo: set dpo_baseline.beta"
    ) in str(e.value)
    with pytest.raises(ConfigError, match="from spin, not dpo: set spin.beta"):
        check_settings_are_read(load_config("tiny", ["method=spin", "dpo.beta=0.2"]))
    # the section the recipe reads: accepted, and it reaches the DPO step
    cfg = load_config("tiny", ["method=dpo", "dpo_baseline.beta=0.2"])
    check_settings_are_read(cfg)
    assert [s.section for s in plan(cfg)[0] if s.stage == "dpo"] == ["dpo_baseline"]
    assert cfg.dpo_baseline.beta == 0.2


def test_a_yaml_file_bound_to_a_recipe_sets_only_what_it_reads(tmp_path):
    bound = tmp_path / "mine.yaml"
    bound.write_text(
        "data: {sft: {path: 'bundled:tiny/sft.jsonl'}, eval: {path: 'bundled:tiny/eval.jsonl'},\n"
        "       po: {path: 'bundled:tiny/po.jsonl'}, improver: {path: 'bundled:tiny/po.jsonl'},\n"
        "       prefs: {path: 'bundled:tiny_prefs/prefs.jsonl', preference_pairs: true}}\n"
        "method: dpo\ndpo: {beta: 0.2}\n"
    )
    with pytest.raises(ConfigError, match="dpo.beta: method dpo .* from dpo_baseline"):
        check_settings_are_read(load_config(str(bound)))
    # a preset-like file (no method of its own) holds every recipe's sections: only overrides count
    preset = tmp_path / "preset.yaml"
    preset.write_text(bound.read_text().replace("method: dpo\n", ""))
    check_settings_are_read(load_config(str(preset), ["method=dpo"]))


def test_the_form_runs_the_recipe_it_names_and_its_edits_are_checked():
    """The UI form shows the deployment's config (a dump of a loaded config, with its source);
    what comes back is validated by Prefect, then settled by the flow."""
    shown = load_config("tiny", ["store.url=/tmp/team-store"]).model_dump(
        mode="json", exclude_defaults=True
    )
    submitted = PipelineConfig.model_validate({**shown, "method": "spin"})
    assert submitted.algorithm == "sgpo"  # the form's values alone: the old recipe's DAG
    cfg = settle_config(submitted)
    assert (cfg.method, cfg.algorithm, cfg.pairs.chosen) == ("spin", "spin", "sft")
    assert cfg.source.overrides == ["store.url=/tmp/team-store", "method=spin"]
    assert cfg.store.url == "/tmp/team-store"
    assert [s.stage for s in plan(cfg)[0]].count("annotate") == 0
    # the same edit from the command line gives the same config
    cli = load_config("tiny", ["store.url=/tmp/team-store", "method=spin"])
    assert cfg.model_dump() == cli.model_dump()

    # an edit in a section the recipe never reads fails, as on the command line
    dpo = settle_config(
        PipelineConfig.model_validate(
            {**shown, "method": "dpo", "dpo": {**shown.get("dpo", {}), "beta": 0.3}}
        )
    )
    with pytest.raises(ConfigError, match="dpo.beta: .* from dpo_baseline"):
        check_settings_are_read(dpo)


def test_params_without_a_source_get_their_recipe_and_are_checked():
    data = load_config("tiny").model_dump(mode="json")["data"]
    spin = PipelineConfig.model_validate({"method": "spin", "data": data})
    assert (spin.algorithm, spin.pairs.chosen) == ("spin", "sft")
    given = PipelineConfig.model_validate(
        {"method": "sgpo-dagger", "shared_improver": True, "data": data}
    )
    assert given.shared_improver is True  # a key given wins over the recipe's, as an override does
    # the data roles every config must give are no choice; the rest of what is given is checked
    check_settings_are_read(
        PipelineConfig.model_validate(
            {"method": "dpo", "dpo_baseline": {"beta": 0.2}, "data": {**data, "sapo": None}}
        )
    )
    with pytest.raises(ConfigError, match="dpo.beta: method dpo"):
        check_settings_are_read(
            PipelineConfig.model_validate({"method": "dpo", "dpo": {"beta": 0.2}, "data": data})
        )


def test_an_unknown_recipe_fails_at_once_with_the_list_of_recipes():
    shown = load_config("tiny").model_dump(mode="json")
    with pytest.raises(ValueError) as e:
        PipelineConfig.model_validate({**shown, "method": "spinn"})
    assert all(f"'{m}'" in str(e.value) for m in method_names())
    with pytest.raises(ConfigError, match="recipes: all-ref, dpo"):
        load_config("tiny", ["method=spinn"])
