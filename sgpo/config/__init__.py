"""Typed configuration: YAML presets + `key=value` overrides, validated by pydantic, one section per
stage. Import what you need from here; the modules are:

    sections    the base of every section, runtime fields, cache payloads, ConfigError
    sources     where data and the base model come from
    stages      the pipeline stages' hyper-parameters
    infra       endpoints, store, tracking, embedded LLM, execution, launch (runtime settings)
    sapo        the SAPO stage's section
    pipeline    PipelineConfig and load_config (`sgpo run`)
    evaluation  EvaluationConfig and load_evaluation_config (`sgpo evaluate`)
    loading     presets (package data: sgpo/configs), overrides, validation messages
"""

from __future__ import annotations

from typing import Any

from sgpo.config.evaluation import (
    AlpacaEvalConfig,
    AlpacaEvalGenerateConfig,
    AlpacaEvalJudgeConfig,
    ArenaHardConfig,
    ArenaHardGenerateConfig,
    ArenaHardJudgeConfig,
    EvalModelSpec,
    EvaluationConfig,
    LmEvalConfig,
    MTBenchGenerateConfig,
    MTBenchJudgeConfig,
    PairwiseConfig,
    load_evaluation_config,
)
from sgpo.config.infra import (
    EmbeddedLLMConfig,
    EndpointConfig,
    ExecutionConfig,
    LaunchConfig,
    StoreConfig,
    TrackingConfig,
)
from sgpo.config.loading import CONFIG_DIR, method_names
from sgpo.config.pipeline import PipelineConfig, load_config
from sgpo.config.sapo import SAPOConfig, SAPOConfigError, check_config
from sgpo.config.sections import (
    NOT_IN_CACHE_KEY,
    ConfigError,
    Section,
    cache_payload,
    key_field_when_set,
    optional_field,
    project,
    runtime_field,
    section_of,
)
from sgpo.config.sources import DataConfig, DatasetSpec, ModelSpec, TinyModelConfig
from sgpo.config.stages import (
    AnnotateStageConfig,
    DataChecksConfig,
    DPOBaselineConfig,
    DPOStageConfig,
    ImproverSFTStageConfig,
    JudgeStageConfig,
    LoRAConfig,
    ORPOStageConfig,
    PairJudgeConfig,
    PairsStageConfig,
    PplFilterStageConfig,
    RefLogpsConfig,
    SampleStageConfig,
    SamplingConfig,
    SFTStageConfig,
    SpinConfig,
    SpinORPOConfig,
    TrainConfig,
)

RECIPES = {"pipeline": load_config, "evaluation": load_evaluation_config}


def load_recipe(kind: str, source: str | None, overrides: list[str]) -> Any:
    """The whole configuration of a `pipeline` or an `evaluation` (a stage's `recipe`)."""
    if kind not in RECIPES:
        raise ConfigError(f"unknown recipe kind {kind!r}; kinds: {', '.join(RECIPES)}")
    return RECIPES[kind](source, overrides)


__all__ = [
    "AlpacaEvalConfig",
    "AlpacaEvalGenerateConfig",
    "AlpacaEvalJudgeConfig",
    "AnnotateStageConfig",
    "ArenaHardConfig",
    "ArenaHardGenerateConfig",
    "ArenaHardJudgeConfig",
    "CONFIG_DIR",
    "ConfigError",
    "DPOBaselineConfig",
    "DPOStageConfig",
    "DataChecksConfig",
    "DataConfig",
    "DatasetSpec",
    "EmbeddedLLMConfig",
    "EndpointConfig",
    "EvalModelSpec",
    "EvaluationConfig",
    "ExecutionConfig",
    "ImproverSFTStageConfig",
    "JudgeStageConfig",
    "LaunchConfig",
    "LmEvalConfig",
    "LoRAConfig",
    "MTBenchGenerateConfig",
    "MTBenchJudgeConfig",
    "ModelSpec",
    "NOT_IN_CACHE_KEY",
    "ORPOStageConfig",
    "PairJudgeConfig",
    "PairsStageConfig",
    "PairwiseConfig",
    "PipelineConfig",
    "PplFilterStageConfig",
    "RECIPES",
    "RefLogpsConfig",
    "SAPOConfig",
    "SAPOConfigError",
    "SFTStageConfig",
    "SampleStageConfig",
    "SamplingConfig",
    "Section",
    "SpinConfig",
    "SpinORPOConfig",
    "StoreConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "cache_payload",
    "check_config",
    "key_field_when_set",
    "load_config",
    "load_evaluation_config",
    "load_recipe",
    "method_names",
    "optional_field",
    "project",
    "runtime_field",
    "section_of",
]
