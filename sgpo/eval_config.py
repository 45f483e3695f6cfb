"""Typed configuration of `sgpo evaluate`: AlpacaEval 2.0, Arena-Hard v0.1 and pairwise win rates.

Same conventions as `sgpo.config` (which this module only imports from): every section is a
pydantic model with `extra="forbid"`, fields carry descriptions (the Prefect UI renders them),
`runtime_field(...)` marks what does not change a stage's output (left out of cache keys), and
`load_evaluation_config(source, overrides)` reads a preset name or YAML file and applies dotted
`key=value` overrides, exactly like `load_config` does for the pipeline.

Defaults are the official protocols:

* AlpacaEval 2.0: the 805 instructions with GPT-4 Turbo's baseline answers from the hub
  (`tatsu-lab/alpaca_eval`), policy sampled at temperature 0.7 / top-p 0.9 (the paper's setting),
  judged by `gpt-4-1106-preview` with the `weighted_alpaca_eval_gpt4_turbo` annotator (one token,
  temperature 1, top-5 logprobs), LC win rate with the official instruction difficulty;
* Arena-Hard v0.1: the 500 questions and gpt-4-0314's answers, greedy answers from the policy,
  `gpt-4-1106-preview` judging two games per question at temperature 0 with the official system
  prompt and template (`sgpo/prompts/arena_hard_judge_v0.1.yaml`), strong verdicts weighted 3x,
  Bradley-Terry score with a 100-round bootstrap (seed 42, as upstream `show_result.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from sgpo.config import (
    ConfigError,
    DatasetSpec,
    EmbeddedLLMConfig,
    EndpointConfig,
    PairJudgeConfig,
    SamplingConfig,
    Section,
    StoreConfig,
    TrackingConfig,
    _parse_override,
    apply_overrides,
    format_validation_error,
    read_yaml_tree,
    runtime_field,
)

__all__ = [
    "ALPACA_EVAL_HUB_FILE",
    "ARENA_HARD_BASELINE_HUB_FILE",
    "ARENA_HARD_QUESTIONS_HUB_FILE",
    "AlpacaEvalConfig",
    "AlpacaEvalGenerateConfig",
    "AlpacaEvalJudgeConfig",
    "ArenaHardConfig",
    "ArenaHardGenerateConfig",
    "ArenaHardJudgeConfig",
    "EvalModelSpec",
    "EvaluationConfig",
    "PairwiseConfig",
    "DEFAULT_EVAL_PRESET",
    "load_evaluation_config",
]

DEFAULT_EVAL_PRESET = "eval-tiny"

# The AlpacaEval 2.0 set: 805 instructions + gpt4_1106_preview's baseline outputs (one JSON file).
ALPACA_EVAL_HUB_FILE = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval_gpt4_baseline.json"
# Arena-Hard v0.1 on the hub: the `data/` tree of the arena-hard-auto repository, mirrored by the
# dataset `lmarena-ai/arena-hard-auto` (upstream README: "git clone ...datasets/lmarena-ai/arena-hard-auto").
ARENA_HARD_QUESTIONS_HUB_FILE = "hf://datasets/lmarena-ai/arena-hard-auto/data/arena-hard-v0.1/question.jsonl"
ARENA_HARD_BASELINE_HUB_FILE = "hf://datasets/lmarena-ai/arena-hard-auto/data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl"

JUDGE_MODEL = "gpt-4-1106-preview"  # both official judges (weighted_alpaca_eval_gpt4_turbo, arena-hard v0.1)


def _judge_endpoint() -> EndpointConfig:
    return EndpointConfig(model=JUDGE_MODEL)


# --------------------------------------------------------------------------- the model


class EvalModelSpec(Section):
    """The model to evaluate. A plain string in YAML/overrides (`model=/path/to/ckpt`) sets `path`."""

    path: str = Field(
        "tiny",
        description="'tiny' (the tiny kit's base model, built locally), a local checkpoint dir, an artifact "
        "URI of a model in the store (e.g. the pipeline's final policy, file://.../dpo/<key>), or a hub id",
    )
    revision: str | None = Field(None, description="Hub revision (hub ids only)")
    name: str | None = Field(
        None, description="Name of the model in annotations and reports (generator_2 / model); default: derived from path"
    )
    trust_remote_code: bool = Field(False, description="Run model code from the hub (off unless you trust it)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


# --------------------------------------------------------------------------- AlpacaEval 2.0


class AlpacaEvalGenerateConfig(Section):
    """What `alpaca_eval_generate` reads: the instructions and how the policy answers them."""

    data: DatasetSpec = Field(
        default_factory=lambda: DatasetSpec(path=ALPACA_EVAL_HUB_FILE, split="eval"),
        description="Instructions with baseline outputs (columns instruction, output, optional dataset, generator); "
        "a hub file (hf://...), a local .json/.jsonl, or bundled:NAME",
    )
    max_rows: int | None = Field(
        None, ge=1, description="Evaluate the first N instructions only (row positions are kept for the LC GLM)"
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=2048),
        description="How the policy answers (the paper: temperature 0.7, top-p 0.9)",
    )
    baseline_name: str | None = Field(
        None, description="generator_1 in annotations; default: the data's `generator` column, else gpt4_1106_preview"
    )


class AlpacaEvalJudgeConfig(PairJudgeConfig):
    """What `alpaca_eval_judge` reads: the judge (weighted_alpaca_eval_gpt4_turbo) and the LC inputs."""

    endpoint: EndpointConfig = Field(default_factory=_judge_endpoint, description="The judge LLM (official: gpt-4-1106-preview)")
    instruction_difficulty: str = Field(
        "hub",
        description="LC GLM difficulty: 'hub' (official instruction_difficulty.csv, needs network), a CSV path, "
        "or 'none' (no LC win rate)",
    )
    gamed_annotations: str = Field(
        "hub",
        description="Upstream df_gamed.csv for the LC GLM's gamed-baseline regulariser: 'hub', a CSV path, or 'none' "
        "(unregularised GLM: NOT the leaderboard's LC, ~2 points off)",
    )


class AlpacaEvalConfig(AlpacaEvalGenerateConfig, AlpacaEvalJudgeConfig):
    """AlpacaEval 2.0: the policy's answers judged against GPT-4 Turbo's with `weighted_alpaca_eval_gpt4_turbo`."""

    enabled: bool = Field(True, description="Run this benchmark")


# --------------------------------------------------------------------------- Arena-Hard v0.1


class ArenaHardGenerateConfig(Section):
    """What `arena_hard_generate` reads: the questions, the baseline's answers, greedy decoding."""

    questions: str = Field(
        ARENA_HARD_QUESTIONS_HUB_FILE,
        description="Questions: official question.jsonl (question_id, category, turns) as a hub file (hf://...), "
        "a URL or a local path; or bundled:NAME / any table with an instruction column",
    )
    baseline_answers: str | None = Field(
        ARENA_HARD_BASELINE_HUB_FILE,
        description="Baseline answers: official model_answer jsonl (question_id, model_id, choices[0].turns[0].content); "
        "null = the questions table holds them (column output/response/answer)",
    )
    revision: str | None = Field(None, description="Hub revision of both files (reproducibility)")
    max_rows: int | None = Field(None, ge=1, description="Judge the first N questions only")
    baseline_name: str = Field("gpt-4-0314", description="The baseline model's name (anchor of the score: 50%)")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=4096),
        description="How the policy answers (official gen_answer: greedy, max 4096 tokens)",
    )


class ArenaHardJudgeConfig(Section):
    """What `arena_hard_judge` reads: the judge, its official settings and the score's bootstrap."""

    endpoint: EndpointConfig = Field(default_factory=_judge_endpoint, description="The judge LLM (official: gpt-4-1106-preview)")
    judge_settings: str = Field(
        "arena_hard_judge_v0.1",
        description="Official judge settings file under sgpo/prompts (system prompt, template, regex)",
    )
    judge_temperature: float = Field(0.0, ge=0, le=2, description="Judge temperature (official: 0)")
    judge_max_tokens: int = Field(4096, ge=1, description="Judge max tokens per turn (official: 4096)")
    judgment_attempts: int = Field(
        2, ge=1, description="Judge turns per game: a follow-up asks for the label when none was given (official: 2)"
    )
    weight: int = Field(3, ge=1, description="Battles counted per strong verdict (A>>B, B>>A) (official: 3)")
    bootstrap_rounds: int = Field(100, ge=0, description="Bootstrap resamples for the 95% CI (official: 100)")
    seed: int = Field(42, description="Bootstrap seed (official show_result.py: 42)")
    max_unlabelled_fraction: float = runtime_field(
        0.5, "Fail (publishing nothing) when more than this share of the games has no [[..]] verdict; 1 disables "
        "the check", ge=0, le=1,
    )


class ArenaHardConfig(ArenaHardGenerateConfig, ArenaHardJudgeConfig):
    """Arena-Hard v0.1: two judge games per question (positions swapped) vs gpt-4-0314, Bradley-Terry score."""

    enabled: bool = Field(True, description="Run this benchmark")


# --------------------------------------------------------------------------- pairwise


class PairwiseConfig(PairJudgeConfig):
    """Win rate of one response column over another column of a table artifact, AlpacaEval-style judge.

    E.g. Table 1 of the paper on the `annotate` artifact: `imp` vs `policy` (improved vs response B)
    and `imp` vs `reference` (improved vs response A). `model_column` plays the evaluated model
    (output_2), `baseline_column` the baseline (output_1); the win rate is model_column's.
    """

    name: str = Field(description="Label of this comparison in reports, e.g. imp_vs_policy", pattern=r"^[A-Za-z0-9_.-]+$")
    table: str = runtime_field(
        ..., "URI of a table artifact in the store (its folder, holding manifest.json); "
        "an input artifact: its content hash, not this URI, is in the cache key")
    instruction_column: str = Field("prompt", description="Column with the instruction")
    model_column: str = Field("imp", description="Column whose win rate is reported (shown as the model)")
    baseline_column: str = Field("policy", description="Column it is compared against (the baseline)")
    max_rows: int | None = Field(None, ge=1, description="Judge the first N usable rows only")
    endpoint: EndpointConfig = Field(default_factory=_judge_endpoint, description="The judge LLM")


# --------------------------------------------------------------------------- the whole evaluation


class EvaluationConfig(Section):
    """One evaluation run: which model, which benchmarks, where artifacts and metrics go."""

    name: str = Field("sgpo-eval", description="Run name (MLflow run name)")
    model: EvalModelSpec = Field(default_factory=EvalModelSpec, description="The model to evaluate")
    alpaca_eval: AlpacaEvalConfig = Field(default_factory=AlpacaEvalConfig)
    arena_hard: ArenaHardConfig = Field(default_factory=ArenaHardConfig)
    pairwise: list[PairwiseConfig] = Field(default_factory=list, description="Pairwise column comparisons")
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig(experiment="sgpo-eval"))
    embedded_llm: EmbeddedLLMConfig = Field(
        default_factory=EmbeddedLLMConfig,
        description="Stand-in judge for endpoints without base_url; model 'base' = the evaluated model itself",
    )

    @field_validator("pairwise")
    @classmethod
    def _unique_names(cls, value: list[PairwiseConfig]) -> list[PairwiseConfig]:
        names = [p.name for p in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"pairwise names must be unique, repeated: {dup}")
        return value


# --------------------------------------------------------------------------- loading


def _is_model_path(override: str) -> bool:
    parts, value = _parse_override(override)
    return parts == ["model"] and isinstance(value, str)


def load_evaluation_config(
    source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> EvaluationConfig:
    """Load a preset name (`eval-tiny` -> configs/eval-tiny.yaml) or YAML file, apply `key=value` overrides, validate.

    Raises `sgpo.config.ConfigError` with the offending dotted key, as `load_config` does.
    """
    path, tree = read_yaml_tree(source, default=DEFAULT_EVAL_PRESET, glob="eval-*.yaml", kind="evaluation config")
    if isinstance(tree.get("model"), str):  # `model: DIR` is short for `model: {path: DIR}`
        tree["model"] = {"path": tree["model"]}
    # `model=DIR` is short for `model.path=DIR` (keeps model.name etc. given elsewhere)
    apply_overrides(tree, ["model.path=" + o.split("=", 1)[1] if _is_model_path(o) else o for o in overrides])
    try:
        return EvaluationConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path), EvaluationConfig, "evaluation configuration")) from None
