"""The pipeline's configuration: one recipe run (`sgpo run`), every section, and its loader.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key fails at load time
with its dotted path, and the flow's parameter schema renders as a form in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from sgpo.config.infra import (
    EmbeddedLLMConfig,
    ExecutionConfig,
    LaunchConfig,
    StoreConfig,
    Threads,
    TrackingConfig,
    threads_field,
)
from sgpo.config.loading import (
    CONFIG_DIR,
    apply_overrides,
    changed_keys,
    format_override,
    format_validation_error,
    leaf_keys,
    merge_trees,
    method_names,
    method_tree,
    parse_override,
    read_yaml_tree,
)
from sgpo.config.sapo import SAPOConfig
from sgpo.config.sections import ConfigError, Section, runtime_field
from sgpo.config.sources import DataConfig, ModelSpec
from sgpo.config.stages import (
    AnnotateStageConfig,
    DataChecksConfig,
    DPOBaselineConfig,
    DPOStageConfig,
    ImproverSFTStageConfig,
    JudgeStageConfig,
    ORPOStageConfig,
    PairsStageConfig,
    PplFilterStageConfig,
    SampleStageConfig,
    SFTStageConfig,
    SpinConfig,
    SpinORPOConfig,
    TrainConfig,
)

RECIPES = tuple(method_names())


class ConfigSource(Section):
    """Where a pipeline config comes from: a preset (or YAML file) and the overrides on top, in
    order. `load_config` records it; a run re-applies it with what was edited since (the UI form,
    `--params`) as further overrides, so a recipe chosen there runs as from the CLI."""

    preset: str = Field(
        description="The preset name (sgpo/configs/NAME.yaml) or YAML file the settings start from"
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="key=value settings over the preset and the recipe, in order (method=NAME picks "
        "the recipe)",
    )


class PipelineConfig(Section):
    """One SGPO run: base model, data, every stage's settings, and where things are kept."""

    name: str = Field("sgpo-tiny", description="Run name (MLflow run name)")
    method: Literal[RECIPES] = Field(  # type: ignore[valid-type]
        "sgpo",
        description="The recipe (configs/methods/NAME.yaml, merged over the preset): sgpo, sgpo-step2, "
        "sgpo-dagger, sgpo-double-dagger, sgpo-diamond, sgpo-v1..v3, all-ref, no-ref, dpo, spin, orpo, "
        "spin-orpo, sapo-dpo, sapo-orpo, sft, sft-continued and the SAPO ablations (configs/methods/). "
        "Changed in the UI form, it runs that recipe",
    )
    source: ConfigSource | None = runtime_field(
        None,
        "Set by the loader: the preset and overrides these settings come from. A run applies what "
        "was edited since (e.g. in this form) as further overrides; without it the settings are "
        "taken as given, with the recipe of `method` under them",
    )
    algorithm: Literal[
        "sgpo", "dpo", "spin", "orpo", "spin_orpo", "sapo", "sft", "sft_continued"
    ] = Field(
        "sgpo",
        description="Which DAG runs: sgpo (and its ablations), dpo (on data.prefs), spin (spin.iterations), "
        "orpo (on data.prefs), spin_orpo (SPIN with ORPO steps), sapo (the sapo stage on data.sapo), sft "
        "(pi_sft itself), sft_continued (more SFT of pi_sft on D_po's references: the continued-SFT control)",
    )
    start: Literal["sft", "base"] = Field(
        "sft",
        description="What pi_sft is: the sft stage's model, or the base model itself, with no sft stage: "
        "a base that is already an SFT model (wandb/mistral-7b-zephyr-sft), or the raw base that the "
        "SAPO paper's ORPO-based methods start from",
    )
    seed: int = Field(
        42, description="Run-level seed, kept for the record; each stage has its own seed setting"
    )
    threads: Threads = threads_field()
    model: ModelSpec = Field(default_factory=ModelSpec, description="The base model")
    data: DataConfig = Field(
        description="The datasets each stage reads (D_sft, D_imp, D_po, eval, ...)"
    )
    shared_improver: bool = Field(
        True,
        description="Policy and improver share parameters (SGPO); off = separate models (SGPO-dagger)",
    )
    rounds: int = Field(1, ge=1, description="Pair generation + DPO rounds (2 = SGPO + Step 2)")
    sft: SFTStageConfig = Field(
        default_factory=SFTStageConfig, description="SFT of the base model on D_sft: pi_sft"
    )
    sample: SampleStageConfig = Field(
        default_factory=SampleStageConfig,
        description="pi_sft answers the D_imp prompts (y, response B)",
    )
    annotate: AnnotateStageConfig = Field(
        default_factory=AnnotateStageConfig,
        description="The external LLM improves pi_sft's answer y toward y_sft (y_imp) and answers directly (y_ext)",
    )
    ppl_filter: PplFilterStageConfig = Field(
        default_factory=PplFilterStageConfig,
        description="Perplexity IQR filter of the improved answers",
    )
    improver_sft: ImproverSFTStageConfig = Field(
        default_factory=ImproverSFTStageConfig,
        description="SFT of the improver on the filtered answers",
    )
    pairs: PairsStageConfig = Field(
        default_factory=PairsStageConfig,
        description="Preference pairs: the policy's answer (rejected) vs its refinement or y_sft (chosen)",
    )
    dpo: DPOStageConfig = Field(
        default_factory=DPOStageConfig, description="DPO of the policy on the pairs"
    )
    dpo_baseline: DPOBaselineConfig = Field(
        default_factory=DPOBaselineConfig, description="algorithm=dpo"
    )
    spin: SpinConfig = Field(default_factory=SpinConfig, description="algorithm=spin")
    orpo: ORPOStageConfig = Field(
        default_factory=ORPOStageConfig, description="algorithm=orpo: ORPO on data.prefs"
    )
    spin_orpo: SpinORPOConfig = Field(
        default_factory=SpinORPOConfig, description="algorithm=spin_orpo: SPIN with ORPO steps"
    )
    sft_continued: SFTStageConfig = Field(
        default_factory=SFTStageConfig,
        description="algorithm=sft_continued: SFT of pi_sft on D_po's references",
    )
    report_vs_sft: bool = Field(
        False,
        description="Also judge pi_sft and add the testbed_report stage: the verifier's "
        "scores of pi_sft and of the final policy, and the final policy's win rate over pi_sft",
    )
    sapo: SAPOConfig = Field(
        default_factory=SAPOConfig, description="algorithm=sapo: the sapo stage (sgpo.train.sapo)"
    )
    judge: JudgeStageConfig = Field(
        default_factory=JudgeStageConfig,
        description="Pairwise judge of the final policy vs the eval set's baseline",
    )
    checks: DataChecksConfig = Field(
        default_factory=DataChecksConfig,
        description="Judge checks of the generated data (Table 1, Fig. 8/10), by the judge above",
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Where artifacts are kept (the cache)"
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking")
    embedded_llm: EmbeddedLLMConfig = Field(
        default_factory=EmbeddedLLMConfig,
        description="The local stand-in LLM for endpoints without base_url",
    )
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig,
        description="Where stages run: in-process or the CUDA work pool",
    )
    hardware: LaunchConfig = runtime_field(
        default_factory=LaunchConfig,
        description="Launch of every training stage that sets no `launch` of its own",
    )

    @model_validator(mode="before")
    @classmethod
    def _recipe_under_given_settings(cls, data: Any) -> Any:
        """A config given as data without a `source` (`--params`, a hand-written dict): the recipe
        its `method` names, under the settings given (given keys win, as overrides do)."""
        if isinstance(data, dict) and data.get("source") is None and data.get("method"):
            if data["method"] not in RECIPES:
                return data  # the field's check names the recipes
            return merge_trees(method_tree(str(data["method"])), data)
        return data

    @model_validator(mode="after")
    def _one_sft_unit(self) -> PipelineConfig:
        if self.sft.assistant_turns == "all" and self.data.sft.turns == "all":
            raise ValueError(
                "sft.assistant_turns=all trains every answer of an example's conversation, and "
                "data.sft.turns=all makes one example per answer: each earlier answer would be learned "
                "again in every later example; use data.sft.turns=last with sft.assistant_turns=all (one "
                "example per dialogue) or sft.assistant_turns=final with data.sft.turns=all (one per answer)"
            )
        return self

    @model_validator(mode="after")
    def _hardware_to_training_stages(self) -> PipelineConfig:
        if "hardware" in self.model_fields_set:
            for name in type(self).model_fields:
                section = getattr(self, name)
                launched = isinstance(section, (TrainConfig, SAPOConfig))
                if launched and "launch" not in section.model_fields_set:
                    section.launch = self.hardware.model_copy()
        return self


def load_config(
    source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Load a preset name or YAML file, apply `key=value` overrides, validate; the result records
    both (`source`)."""
    path, tree = read_yaml_tree(source, default="tiny", glob="[!e]*.yaml")
    # a packaged preset by its name, any other file by where it is (a run may start elsewhere)
    packaged = path.resolve().parent == CONFIG_DIR.resolve()
    preset = path.stem if packaged else str(path.resolve())
    tree["source"] = {"preset": preset, "overrides": [str(o) for o in overrides]}
    method = next(
        (
            parse_override(o)[1]
            for o in reversed(list(overrides))
            if o.split("=", 1)[0].strip() == "method"
        ),
        tree.get("method"),
    )
    if method is not None:
        tree = merge_trees(tree, method_tree(str(method)))
    apply_overrides(tree, overrides)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path), PipelineConfig)) from None


def edits_since_loaded(cfg: PipelineConfig) -> list[str]:
    """What differs in `cfg` from the config its `source` loads, as `key=value` overrides (edits in
    the UI form, in `--params`, or by code after loading); [] when nothing does or there is no source."""
    if cfg.source is None:
        return []
    try:
        loaded = load_config(cfg.source.preset, cfg.source.overrides)
    except ConfigError as e:
        raise ConfigError(
            f"this config was loaded from {cfg.source.preset!r} with overrides "
            f"{cfg.source.overrides}, which cannot be loaded here to apply its edits: {e}"
        ) from None
    return [
        format_override(k, v)
        for k, v in changed_keys(
            cfg.model_dump(mode="json", exclude={"source"}),
            loaded.model_dump(mode="json", exclude={"source"}),
        )
    ]


def settle_config(cfg: PipelineConfig) -> PipelineConfig:
    """The config a run uses: its source re-applied with the edits since as further overrides, so
    that an edited `method` runs its recipe (the form: merged as on the command line, where the
    recipe goes under the overrides) and every edit is on record as an override."""
    if not (edits := edits_since_loaded(cfg)):
        return cfg
    assert cfg.source is not None
    return load_config(cfg.source.preset, [*cfg.source.overrides, *edits])


def keys_set_by_the_user(cfg: PipelineConfig) -> list[str]:
    """The dotted keys the user set on top of a preset: every override (and, in a YAML file of the
    user's that names its `method`, every key of that file: a file bound to one recipe); for a config
    given as data without a `source`, every key it gives."""
    # the data roles every config must give (sft, improver, po, eval) are no choice of the user's
    required = {f"data.{r}" for r, f in DataConfig.model_fields.items() if f.is_required()}
    if cfg.source is None:
        return [k for k in _given_keys(cfg) if ".".join(k.split(".")[:2]) not in required]
    keys = [".".join(parse_override(o)[0]) for o in cfg.source.overrides]
    path = Path(cfg.source.preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        _, tree = read_yaml_tree(path, default="tiny")
        if "method" in tree:
            keys += [
                k
                for k in leaf_keys(tree)
                if k.split(".")[0] not in ("method", "source")
                and ".".join(k.split(".")[:2]) not in required
            ]
    return keys


def _given_keys(model: Any, prefix: str = "") -> list[str]:
    out = []
    for name in sorted(model.model_fields_set):
        value = getattr(model, name)
        key = f"{prefix}{name}"
        field = type(model).model_fields[name]
        if not field.is_required() and value == field.get_default(call_default_factory=True):
            continue  # given as its default: nothing is set
        if isinstance(value, Section) and value.model_fields_set:
            out += _given_keys(value, key + ".")
        else:
            out.append(key)
    return out
