"""Typed configuration of `sgpo evaluate`: AlpacaEval 2.0, Arena-Hard v0.1 and pairwise win rates.

Same conventions as `sgpo.config.pipeline`: every section is a
pydantic model with `extra="forbid"`, fields carry descriptions (the Prefect UI renders them),
`runtime_field(...)` marks what does not change a stage's output (left out of cache keys), and
`load_evaluation_config(source, overrides)` reads a preset name or YAML file and applies dotted
`key=value` overrides, exactly like `load_config` does for the pipeline.

Defaults are the official protocols:

* AlpacaEval 2.0: the 805 instructions with GPT-4 Turbo's baseline answers from the hub
  (`tatsu-lab/alpaca_eval`), policy sampled at temperature 0.7 / top-p 0.9 (the paper's setting),
  judged by `gpt-4-1106-preview` with the `weighted_alpaca_eval_gpt4_turbo` annotator (one token,
  temperature 1, top-5 logprobs), LC win rate regularised as upstream (hub files, else the offline
  reconstructions: `lc_offline_dir`);
* Arena-Hard v0.1: the 500 questions and gpt-4-0314's answers, greedy answers from the policy,
  `gpt-4-1106-preview` judging two games per question at temperature 0 with the official system
  prompt and template (`sgpo/prompts/arena_hard_judge_v0.1.yaml`), strong verdicts weighted 3x,
  Bradley-Terry score with a 100-round bootstrap (seed 42, as upstream `show_result.py`);
* MT-Bench (off unless enabled): the 80 questions, two turns (the second sees the policy's own first
  answer), FastChat's per-category temperatures, max 1024 new tokens; single-answer grading by
  `gpt-4` at temperature 0 with the official prompts (reference-guided for math/reasoning/coding);
* lm-eval (off unless enabled): lm-evaluation-harness tasks with the Open LLM Leaderboard (v1)
  few-shot settings, and IFEval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from sgpo.config.infra import (
    EmbeddedLLMConfig,
    EndpointConfig,
    ExecutionConfig,
    StoreConfig,
    Threads,
    TrackingConfig,
    threads_field,
)
from sgpo.config.loading import (
    apply_overrides,
    format_validation_error,
    parse_override,
    read_yaml_tree,
)
from sgpo.config.sections import ConfigError, Section, runtime_field
from sgpo.config.sources import DatasetSpec
from sgpo.config.stages import PairJudgeConfig, SamplingConfig

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
    "LmEvalConfig",
    "LmEvalTaskSpec",
    "MTBenchConfig",
    "MTBenchGenerateConfig",
    "MTBenchJudgeConfig",
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
ARENA_HARD_QUESTIONS_HUB_FILE = (
    "hf://datasets/lmarena-ai/arena-hard-auto/data/arena-hard-v0.1/question.jsonl"
)
ARENA_HARD_BASELINE_HUB_FILE = (
    "hf://datasets/lmarena-ai/arena-hard-auto/data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl"
)

JUDGE_MODEL = (
    "gpt-4-1106-preview"  # both official judges (weighted_alpaca_eval_gpt4_turbo, arena-hard v0.1)
)


def _judge_endpoint() -> EndpointConfig:
    return EndpointConfig(model=JUDGE_MODEL)


# --------------------------------------------------------------------------- the model


class EvalModelSpec(Section):
    """The model to evaluate. A plain string in YAML/overrides (`model=/path/to/ckpt`) sets `path`."""

    path: str = Field(
        "tiny",
        description="'tiny' (the tiny kit's base model, built locally), a GGUF file or packaged:NAME "
        "(converted once by the base_model stage), a local checkpoint dir, an artifact URI of a model in "
        "the store (e.g. the pipeline's final policy, file://.../dpo/KEY), or a hub id",
    )
    revision: str | None = Field(None, description="Hub revision (hub ids only)")
    name: str | None = Field(
        None,
        description="Name of the model in annotations and reports (generator_2 / model); default: derived from path",
    )
    trust_remote_code: bool = Field(
        False, description="Run model code from the hub (off unless you trust it)"
    )

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
        None,
        ge=1,
        description="Evaluate the first N instructions only (row positions are kept for the LC GLM)",
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=2048),
        description="How the policy answers (the paper: temperature 0.7, top-p 0.9)",
    )
    baseline_name: str | None = Field(
        None,
        description="generator_1 in annotations; default: the data's `generator` column, else gpt4_1106_preview",
    )


class AlpacaEvalJudgeConfig(PairJudgeConfig):
    """What `alpaca_eval_judge` reads: the judge (weighted_alpaca_eval_gpt4_turbo) and the LC inputs."""

    endpoint: EndpointConfig = Field(
        default_factory=_judge_endpoint, description="The judge LLM (official: gpt-4-1106-preview)"
    )
    instruction_difficulty: str = Field(
        "auto",
        description="LC GLM difficulty: 'auto' (the hub's instruction_difficulty.csv when reachable, else the offline "
        "reconstruction in lc_offline_dir), 'hub', a CSV path, or 'none' (no LC win rate)",
    )
    gamed_annotations: str = Field(
        "auto",
        description="Upstream df_gamed.csv for the LC GLM's gamed-baseline regulariser: 'auto' (hub when reachable, else "
        "the offline reconstruction in lc_offline_dir), 'hub', a CSV path, or 'none' (unregularised GLM: NOT the "
        "leaderboard's LC, up to 17 points off on a length-gamed model)",
    )
    lc_offline_dir: str | None = Field(
        None,
        description="Folder with df_gamed_offline_reconstruction.csv and instruction_difficulty_offline_reconstruction.csv "
        "('auto' without the hub); default: $SGPO_SHARED_DATA/alpaca_eval, else ../shared/data/alpaca_eval",
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
    baseline_name: str = Field(
        "gpt-4-0314", description="The baseline model's name (anchor of the score: 50%)"
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=4096),
        description="How the policy answers (official gen_answer: greedy, max 4096 tokens)",
    )


class ArenaHardJudgeConfig(Section):
    """What `arena_hard_judge` reads: the judge, its official settings and the score's bootstrap."""

    endpoint: EndpointConfig = Field(
        default_factory=_judge_endpoint, description="The judge LLM (official: gpt-4-1106-preview)"
    )
    judge_settings: str = Field(
        "arena_hard_judge_v0.1",
        description="Official judge settings file under sgpo/prompts (system prompt, template, regex)",
    )
    judge_temperature: float = Field(0.0, ge=0, le=2, description="Judge temperature (official: 0)")
    judge_max_tokens: int = Field(
        4096, ge=1, description="Judge max tokens per turn (official: 4096)"
    )
    judgment_attempts: int = Field(
        2,
        ge=1,
        description="Judge turns per game: a follow-up asks for the label when none was given (official: 2)",
    )
    weight: int = Field(
        3, ge=1, description="Battles counted per strong verdict (A>>B, B>>A) (official: 3)"
    )
    bootstrap_rounds: int = Field(
        100, ge=0, description="Bootstrap resamples for the 95% CI (official: 100)"
    )
    seed: int = Field(42, description="Bootstrap seed (official show_result.py: 42)")
    max_unlabelled_fraction: float = runtime_field(
        0.1,
        "Fail (publishing nothing, and reusing no stored result) when more than this share of the games "
        "has no [[..]] verdict; 1 disables the check",
        ge=0,
        le=1,
    )


class ArenaHardConfig(ArenaHardGenerateConfig, ArenaHardJudgeConfig):
    """Arena-Hard v0.1: two judge games per question (positions swapped) vs gpt-4-0314, Bradley-Terry score."""

    enabled: bool = Field(True, description="Run this benchmark")


# --------------------------------------------------------------------------- MT-Bench

# lm-sys/FastChat fastchat/llm_judge/data (the files `download_mt_bench_pregenerated.py` and the README use)
MT_BENCH_QUESTIONS_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl"
MT_BENCH_REFERENCE_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl"
# FastChat fastchat/llm_judge/common.py `temperature_config` (gen_model_answer.py; < 1e-4 means greedy)
MT_BENCH_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
# FastChat common.py NEED_REF_CATS: graded against the GPT-4 reference answer
MT_BENCH_REFERENCE_CATEGORIES = ["math", "reasoning", "coding", "arena-hard-200"]


class MTBenchGenerateConfig(Section):
    """What `mt_bench_generate` reads: the questions and how the policy answers both turns."""

    questions: str = Field(
        MT_BENCH_QUESTIONS_URL,
        description="MT-Bench question.jsonl (question_id, category, turns[2]): a URL, hf://... file or local path",
    )
    max_rows: int | None = Field(None, ge=1, description="Answer the first N questions only")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=1024),
        description="How the policy answers (FastChat gen_model_answer: max 1024 new tokens, top-p 1); the temperature "
        "is per category (category_temperature), this one for categories not listed there",
    )
    category_temperature: dict[str, float] = Field(
        default_factory=lambda: dict(MT_BENCH_TEMPERATURES),
        description="Temperature per category (FastChat temperature_config; 0 = greedy)",
    )


class MTBenchJudgeConfig(Section):
    """What `mt_bench_judge` reads: the judge, the official single-answer prompts and the reference answers."""

    endpoint: EndpointConfig = Field(
        default_factory=lambda: EndpointConfig(model="gpt-4"),
        description="The judge LLM (official: gpt-4)",
    )
    judge_prompts: str = Field(
        "mt_bench_judge_single_v1", description="Official prompt file under sgpo/prompts (.jsonl)"
    )
    reference_answers: str | None = Field(
        MT_BENCH_REFERENCE_URL,
        description="GPT-4 reference answers (question_id, choices[0].turns) for the reference-guided categories; "
        "null = grade every question without a reference (NOT the official protocol)",
    )
    reference_categories: list[str] = Field(
        default_factory=lambda: list(MT_BENCH_REFERENCE_CATEGORIES),
        description="Categories graded with the reference-guided prompts (FastChat NEED_REF_CATS)",
    )
    judge_temperature: float = Field(0.0, ge=0, le=2, description="Judge temperature (official: 0)")
    judge_max_tokens: int = Field(2048, ge=1, description="Judge max tokens (official: 2048)")


class MTBenchConfig(MTBenchGenerateConfig, MTBenchJudgeConfig):
    """MT-Bench: two-turn answers graded 1-10 by the judge; first-turn, second-turn and overall scores."""

    enabled: bool = Field(False, description="Run this benchmark")


# --------------------------------------------------------------------------- lm-evaluation-harness


class LmEvalTaskSpec(Section):
    """One lm-eval task with its few-shot setting. A plain string in YAML is the task name (its default shots)."""

    name: str = Field(description="lm-eval task name, e.g. arc_challenge, ifeval")
    num_fewshot: int | None = Field(
        None, ge=0, description="Few-shot examples (null: the task's default)"
    )
    metric: str | None = Field(
        None, description="The headline metric reported for it, e.g. acc_norm (null: all)"
    )
    dataset_path: str | None = Field(
        None, description="Override the task's dataset (e.g. 'json' for a local file)"
    )
    data_files: dict[str, str] | None = Field(
        None,
        description="With dataset_path json: {split: local file}, e.g. {train: ../shared/data/ifeval/input_data.jsonl}",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def _open_llm_leaderboard_v1() -> list[LmEvalTaskSpec]:
    """The Open LLM Leaderboard (v1) settings, as the SAPO paper reports them."""
    return [
        LmEvalTaskSpec(name="arc_challenge", num_fewshot=25, metric="acc_norm"),
        LmEvalTaskSpec(name="hellaswag", num_fewshot=10, metric="acc_norm"),
        LmEvalTaskSpec(name="mmlu", num_fewshot=5, metric="acc"),
        LmEvalTaskSpec(name="truthfulqa_mc2", num_fewshot=0, metric="acc"),
        LmEvalTaskSpec(name="winogrande", num_fewshot=5, metric="acc"),
        LmEvalTaskSpec(name="gsm8k", num_fewshot=5, metric="exact_match"),
    ]


class LmEvalConfig(Section):
    """lm-evaluation-harness on the policy checkpoint: Open LLM Leaderboard tasks, IFEval, or any task list."""

    enabled: bool = Field(False, description="Run this benchmark")
    tasks: list[LmEvalTaskSpec] = Field(
        default_factory=_open_llm_leaderboard_v1,
        description="Tasks with their few-shot settings (default: Open LLM Leaderboard v1)",
    )
    chat_template_tasks: list[str] = Field(
        default_factory=lambda: ["ifeval"],
        description="Tasks run with the model's chat template (instruction following); the others as plain few-shot "
        "prompts, as the leaderboard",
    )
    include_paths: list[str] = Field(
        default_factory=list, description="Folders with more lm-eval task YAMLs"
    )
    # in the key (lm_eval code version 2): another back-end computes other numbers, and a batch pads
    # its requests to another length (not proven to change no score, so not left out)
    backend: str = Field("hf", description="lm-eval model back-end: hf (transformers) or vllm")
    batch_size: int = Field(8, ge=1, description="lm-eval batch size")
    max_length: int | None = Field(
        None, ge=16, description="Context length given to lm-eval (null: the model's)"
    )
    max_gen_toks: int | None = Field(
        None, ge=1, description="Cap on generated tokens per request (null: the task's)"
    )
    limit: int | None = Field(
        None, ge=1, description="First N documents per task only (NOT comparable; for tests)"
    )
    seed: int = Field(
        0, description="Seeds of lm-eval (random, numpy, torch, fewshot) and of langdetect"
    )


# --------------------------------------------------------------------------- pairwise


class PairwiseConfig(PairJudgeConfig):
    """Win rate of one response column over another column of a table artifact, AlpacaEval-style judge.

    E.g. Table 1 of the paper on the `annotate` artifact: `imp` vs `policy` (improved vs response B)
    and `imp` vs `reference` (improved vs response A). `model_column` plays the evaluated model
    (output_2), `baseline_column` the baseline (output_1); the win rate is model_column's.
    """

    name: str = Field(
        description="Label of this comparison in reports, e.g. imp_vs_policy",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    table: str | None = runtime_field(
        None,
        "URI of a table artifact in the store (its folder, holding manifest.json); "
        "an input artifact: its content hash, not this URI, is in the cache key. Required in `sgpo evaluate`; "
        "in the pipeline (`checks`) the table is the stage's input",
    )
    instruction_column: str = Field("prompt", description="Column with the instruction")
    model_column: str = Field(
        "imp", description="Column whose win rate is reported (shown as the model)"
    )
    baseline_column: str = Field(
        "policy", description="Column it is compared against (the baseline)"
    )
    max_rows: int | None = Field(None, ge=1, description="Judge the first N usable rows only")
    endpoint: EndpointConfig = Field(default_factory=_judge_endpoint, description="The judge LLM")


# --------------------------------------------------------------------------- the whole evaluation


class EvaluationConfig(Section):
    """One evaluation run: which model, which benchmarks, where artifacts and metrics go."""

    name: str = Field("sgpo-eval", description="Run name (MLflow run name)")
    threads: Threads = threads_field()
    model: EvalModelSpec = Field(default_factory=EvalModelSpec, description="The model to evaluate")
    alpaca_eval: AlpacaEvalConfig = Field(
        default_factory=AlpacaEvalConfig,
        description="AlpacaEval 2.0: generation, judge, WR / LC WR with SEs",
    )
    arena_hard: ArenaHardConfig = Field(
        default_factory=ArenaHardConfig,
        description="Arena-Hard v0.1: generation, judge, score with 95% bootstrap CI",
    )
    mt_bench: MTBenchConfig = Field(
        default_factory=MTBenchConfig, description="MT-Bench: two-turn answers, 1-10 judge scores"
    )
    lm_eval: LmEvalConfig = Field(
        default_factory=LmEvalConfig, description="lm-eval tasks (Open LLM Leaderboard, IFEval)"
    )
    pairwise: list[PairwiseConfig] = Field(
        default_factory=list, description="Pairwise column comparisons"
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Where artifacts are kept (the cache)"
    )
    tracking: TrackingConfig = Field(
        default_factory=lambda: TrackingConfig(experiment="sgpo-eval"),
        description="MLflow tracking",
    )
    embedded_llm: EmbeddedLLMConfig = Field(
        default_factory=EmbeddedLLMConfig,
        description="Stand-in judge for endpoints without base_url; model 'base' = the evaluated model itself",
    )
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig,
        description="local: every stage in this process (one loaded model for all benchmarks); distributed: the "
        "generate stages and lm_eval run on the CUDA pool (each loads the model)",
    )

    @field_validator("pairwise")
    @classmethod
    def _unique_names(cls, value: list[PairwiseConfig]) -> list[PairwiseConfig]:
        names = [p.name for p in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"pairwise names must be unique, repeated: {dup}")
        if untabled := [p.name for p in value if not p.table]:
            raise ValueError(
                f"pairwise {untabled}: `table` (the URI of a table artifact) is required"
            )
        return value


# --------------------------------------------------------------------------- loading


def _is_model_path(override: str) -> bool:
    parts, value = parse_override(override)
    return parts == ["model"] and isinstance(value, str)


def load_evaluation_config(
    source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> EvaluationConfig:
    """Load a preset name (`eval-tiny` -> configs/eval-tiny.yaml) or YAML file, apply `key=value` overrides, validate.

    Raises `sgpo.config.ConfigError` with the offending dotted key, as `load_config` does.
    """
    path, tree = read_yaml_tree(
        source, default=DEFAULT_EVAL_PRESET, glob="eval-*.yaml", kind="evaluation config"
    )
    if isinstance(tree.get("model"), str):  # `model: DIR` is short for `model: {path: DIR}`
        tree["model"] = {"path": tree["model"]}
    # `model=DIR` is short for `model.path=DIR` (keeps model.name etc. given elsewhere)
    apply_overrides(
        tree, ["model.path=" + o.split("=", 1)[1] if _is_model_path(o) else o for o in overrides]
    )
    try:
        return EvaluationConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(e, str(path), EvaluationConfig, "evaluation configuration")
        ) from None
