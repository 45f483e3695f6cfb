"""Typed pipeline configuration: YAML presets + `key=value` overrides, validated by pydantic.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key fails at load time
with its dotted path, and the flow's parameter schema renders as a form in the Prefect UI.

Fields marked `runtime_field(...)` change how a stage runs (URLs, concurrency, batch sizes,
timeouts) but not what it produces; they are left out of cache keys, so e.g. a new port for
the embedded LLM server does not invalidate finished annotation.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sgpo.config.sapo import SAPOConfig
from sgpo.config.sections import (  # noqa: F401 (re-exported)
    KEY_WHEN_SET,
    NOT_IN_CACHE_KEY,
    Section,
    key_field_when_set,
    optional_field,
    runtime_field,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_DIR.parent / "configs"
SectionT = TypeVar("SectionT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


# --------------------------------------------------------------------------- LLM endpoints


class EndpointConfig(BaseModel):
    """An OpenAI-compatible endpoint and how hard to try it. The API key itself is never stored."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = runtime_field(
        None, "OpenAI-compatible base URL; None = the pipeline starts the embedded server"
    )
    model: str = Field("gpt-4-turbo", description="Model id sent with every request")
    api_key_env: str = runtime_field(
        "OPENAI_API_KEY",
        "NAME of the env var holding the key; unset is allowed only for a loopback base_url",
    )
    timeout_s: float = runtime_field(60.0, "Per-attempt HTTP timeout", gt=0)
    max_concurrency: int = runtime_field(8, "Requests in flight at once", ge=1)
    max_retries: int = runtime_field(
        6, "Retries per request for transport errors, 429 and 5xx", ge=0
    )
    max_invalid_retries: int = Field(
        2,
        ge=0,
        description="Re-asks for empty/truncated/refused/unparseable answers before keeping it as invalid",
    )
    backoff_base_s: float = runtime_field(
        1.0, "First retry delay; doubles each retry, with jitter", ge=0
    )
    backoff_max_s: float = runtime_field(60.0, "Cap on one retry delay", ge=0)
    price_per_1m_prompt_tokens: float | None = runtime_field(
        None, "USD per 1M prompt tokens, for cost reports", ge=0
    )
    price_per_1m_completion_tokens: float | None = runtime_field(
        None, "USD per 1M completion tokens", ge=0
    )
    mode: Literal["sync", "batch"] = runtime_field(
        "sync",
        "sync: one HTTP request per call; batch: OpenAI's Batch API (half price, answers within 24 h)",
    )
    batch_poll_s: float = runtime_field(
        10.0, "Batch mode: first wait between status checks; doubles while nothing ends", gt=0
    )
    batch_poll_max_s: float = runtime_field(
        300.0, "Batch mode: longest wait between status checks", gt=0
    )
    batch_max_requests: int = runtime_field(
        50_000, "Batch mode: requests per batch (OpenAI's limit: 50,000)", ge=1
    )
    batch_discount: float = runtime_field(
        0.5, "Batch mode: price factor of batch tokens (OpenAI: half price)", gt=0, le=1
    )


# --------------------------------------------------------------------------- data and model


class DatasetSpec(Section):
    """Where a dataset comes from and which columns hold the prompt and the reference response.

    `path` is a hub id (loaded with `datasets.load_dataset`), a local .json/.jsonl/.parquet file,
    or `bundled:NAME` for files shipped in `sgpo/data/bundled`. With no column given, the loader looks for
    a chat `messages` column, then `chosen` (preference sets), then `prompt` + `response`.
    """

    path: str = Field(description="Hub id, local file, or bundled:NAME")
    name: str | None = Field(None, description="Dataset configuration name on the hub")
    split: str = Field("train", description="Split to load, e.g. train_sft")
    revision: str | None = Field(
        None, description="Hub revision (commit or tag) for reproducibility"
    )
    prompt_column: str | None = Field(None, description="Column with the instruction")
    response_column: str | None = Field(None, description="Column with the reference response")
    messages_column: str | None = Field(
        None, description="Column with a chat (list of {role, content})"
    )
    max_rows: int | None = Field(
        None, ge=1, description="Keep only the first N rows (after shuffling)"
    )
    shuffle_seed: int | None = Field(None, description="Shuffle with this seed before max_rows")
    turns: Literal["last", "all"] = Field(
        "last",
        description="Chats: 'last' = one row per chat, the conversation up to its final assistant answer (the "
        "reference); 'all' = one row per assistant turn (SFT on every turn of a dialogue, as on UltraChat)",
    )
    preference_pairs: bool = Field(
        False,
        description="Read chosen/rejected preference pairs (the DPO baseline's data, e.g. UltraFeedback train_prefs): "
        "columns chosen_column / rejected_column, chats or strings",
    )
    chosen_column: str = Field(
        "chosen", description="preference_pairs: column with the chosen answer (chat or string)"
    )
    rejected_column: str = Field(
        "rejected", description="preference_pairs: column with the rejected answer"
    )


class TinyModelConfig(Section):
    """The locally built tiny model (used when model.name_or_path == 'tiny')."""

    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary size")
    hidden_size: int = Field(
        128, ge=1, description="Hidden size; hidden/heads = 64 so vLLM can serve it"
    )
    num_attention_heads: int = Field(2, ge=1, description="Attention heads")
    num_hidden_layers: int = Field(2, ge=1, description="Transformer layers")
    intermediate_size: int = Field(256, ge=1, description="MLP hidden size")
    max_position_embeddings: int = Field(1024, ge=1, description="Longest sequence in tokens")
    seed: int = Field(0, description="Seed of the tiny model's initial weights")


class ModelSpec(Section):
    name_or_path: str = Field(
        "tiny",
        description="The base model: a hub id, a local checkpoint dir, a GGUF file (*.gguf) or a "
        "packaged model (packaged:SmolLM2-135M-Instruct), both converted once into the store; 'tiny' "
        "builds one locally",
    )
    revision: str | None = Field(None, description="Hub revision")
    trust_remote_code: bool = Field(
        False, description="Run model code from the hub (off unless you trust it)"
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig,
        description="The tiny model's shape (name_or_path=tiny only)",
    )


class DataConfig(Section):
    sft: DatasetSpec = Field(description="D_sft: SFT data (UltraChat-200k train_sft in the paper)")
    improver: DatasetSpec = Field(
        description="D_imp: prompts + SFT responses for improver data (dpo-mix-7k)"
    )
    po: DatasetSpec = Field(
        description="D_po: prompts + SFT references for preference optimisation"
    )
    eval: DatasetSpec = Field(description="Judging prompts with baseline answers")
    prefs: DatasetSpec | None = Field(
        None,
        description="Preference pairs for the DPO baseline (UltraFeedback train_prefs; preference_pairs: true)",
    )
    sapo: DatasetSpec | None = Field(
        None,
        description="(x, y+) rows for SAPO (Distilabel-Capybara: the dialogue up to the final user turn, "
        "and the chosen final answer)",
    )


# --------------------------------------------------------------------------- stages


class LaunchConfig(Section):
    """Hardware of a training stage (how it is launched), never its hyper-parameters: runtime only.

    One process and no accelerate config: the stage trains in its own process. Otherwise it runs under
    `accelerate launch --config_file ACCELERATE_CONFIG --num_processes N -m tasks.STAGE` (sgpo.core.launch)."""

    accelerate_config: str | None = Field(
        None,
        description="accelerate config: a file, or a name in configs/accelerate (ddp, fsdp, zero3, ...)",
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        description="Processes (one per GPU); None: the visible GPUs when an accelerate config is named, else 1",
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Rendezvous port (None: a free one)"
    )


class LoRAConfig(Section):
    """LoRA (or QLoRA with quantization=4bit) instead of full fine-tuning (peft)."""

    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA layers, in [0, 1)")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt (peft's target_modules); ['all-linear'] = every linear layer but the head",
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA (bitsandbytes NF4, CUDA only)"
    )
    keep_adapter: bool = Field(
        False, description="Publish the adapter (+ base reference) instead of a merged checkpoint"
    )


class TrainConfig(Section):
    """Training hyper-parameters; hardware (accelerate/DeepSpeed) lives in separate files."""

    epochs: float = Field(
        1.0, gt=0, description="Passes over the training data (fractions allowed)"
    )
    # (0, 1): a rate of 1 or more is a typo (e.g. 2e5 for 2e-5), never a setting
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Peak learning rate, in (0, 1)")
    per_device_batch_size: int = runtime_field(8, "Micro-batch size per device", ge=1)
    effective_batch_size: int = Field(
        128,
        ge=1,
        description="Global batch (the paper's 128); gradient accumulation = this / (micro-batch x devices)",
    )
    max_length: int = Field(
        2048, ge=16, description="Longest prompt + answer in tokens; longer ones are truncated"
    )
    lr_scheduler_type: str = Field(
        "cosine", description="transformers' lr scheduler: cosine, linear, constant, ..."
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Fraction of the steps spent warming the learning rate up"
    )
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay")
    max_steps: int = Field(-1, ge=-1, description="Stop after N optimiser steps (-1: full epochs)")
    seed: int = Field(42, description="Training seed (data order, dropout)")
    bf16: bool = runtime_field(False, "bf16 mixed precision (GPU)")
    gradient_checkpointing: bool = runtime_field(False, "Trade compute for memory")
    logging_steps: int = runtime_field(1, "Log metrics every N steps", ge=1)
    launch: LaunchConfig = runtime_field(
        default_factory=LaunchConfig,
        description="How the stage is launched (default: the recipe's `hardware`)",
    )
    lora: LoRAConfig | None = optional_field(
        "LoRA / QLoRA instead of full fine-tuning (`lora=true`: defaults)"
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_switch(cls, v: Any) -> Any:
        return {} if v is True else (None if v is False else v)


class SFTStageConfig(TrainConfig):
    chat_template: str | None = optional_field(
        "Chat template for a base model without one (e.g. Meta-Llama-3-8B): 'chatml' or a Jinja string. "
        "Set on the SFT tokenizer and saved with pi_sft, so training, sampling, pairs and judging all use it",
    )


class SamplingConfig(Section):
    """Generation settings; the paper samples everything at temperature 0.7, top-p 0.9."""

    backend: Literal["transformers", "vllm", "vllm_server", "openai"] = runtime_field(
        "transformers",
        "Generation back-end: transformers (in-process HF), vllm (in-process vllm.LLM), vllm_server (a vLLM "
        "OpenAI server the stage starts for its checkpoint, or the one at base_url), openai (any server at base_url)",
    )
    base_url: str | None = runtime_field(
        None,
        "backend=openai: the server; backend=vllm_server: an already running vLLM server (none: start one)",
    )
    temperature: float = Field(
        0.7, ge=0, le=2, description="[0, 2], the range OpenAI-compatible servers accept"
    )
    top_p: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Nucleus sampling: keep the smallest token set of this probability, in (0, 1]",
    )
    max_new_tokens: int = Field(512, ge=1, description="Longest generated answer in tokens")
    n: int = Field(1, ge=1, description="Samples per prompt")
    seed: int = Field(0, description="Sampling seed")
    batch_size: int = runtime_field(16, "Prompts per generate() call", ge=1)
    # --- server back-ends (openai, vllm_server)
    served_model_name: str | None = runtime_field(
        None,
        "Model name at base_url (default: openai: the checkpoint path; vllm_server: the server's only model)",
    )
    max_concurrency: int = runtime_field(32, "Requests in flight to a server back-end", ge=1)
    # --- vLLM (vllm and vllm_server)
    vllm_python: str | None = runtime_field(
        None,
        "vllm_server: the python that has vLLM, e.g. .venv-vllm/bin/python (default: this interpreter)",
    )
    vllm_dtype: str = runtime_field("auto", "vLLM --dtype (float32 on CPU)")
    vllm_max_model_len: int | None = runtime_field(
        None, "vLLM --max-model-len (default: the model's)", ge=16
    )
    vllm_enforce_eager: bool = runtime_field(
        False, "vLLM --enforce-eager (no CUDA graphs; needed on CPU)"
    )
    vllm_gpu_memory_utilization: float | None = runtime_field(
        None, "vLLM --gpu-memory-utilization", gt=0, le=1
    )
    vllm_tensor_parallel_size: int = runtime_field(
        1,
        "vLLM --tensor-parallel-size: GPUs per model replica (vllm, and a vllm_server sgpo starts)",
        ge=1,
    )
    vllm_data_parallel_size: int = runtime_field(
        1,
        "vllm_server: vLLM --data-parallel-size, model replicas of the server sgpo starts (it uses tensor x data "
        "parallel GPUs); backend vllm (one in-process vllm.LLM) has no data parallelism",
        ge=1,
    )
    vllm_extra_args: list[str] = runtime_field(
        default_factory=list,
        description="vllm_server: more CLI arguments for vllm.entrypoints.openai.api_server",
    )
    vllm_env: dict[str, str] = runtime_field(
        default_factory=dict,
        description="vllm_server: environment for the server, e.g. {VLLM_CPU_KVCACHE_SPACE: '1'}",
    )
    server_startup_timeout_s: float = runtime_field(
        900.0, "vllm_server: how long to wait for the server to be ready", gt=0
    )

    @model_validator(mode="after")
    def _data_parallel_needs_the_server(self) -> SamplingConfig:
        # vLLM's data parallelism is one engine process per replica behind its server's front end (or one
        # launcher process per rank, vLLM's offline example); a single in-process vllm.LLM has none.
        if self.vllm_data_parallel_size > 1 and self.backend == "vllm":
            raise ValueError(
                f"vllm_data_parallel_size={self.vllm_data_parallel_size} needs backend=vllm_server: one in-process "
                "vllm.LLM (backend=vllm) has no data parallelism, while the vLLM OpenAI server sgpo starts runs "
                "--data-parallel-size replicas itself (or set vllm_data_parallel_size=1)"
            )
        return self


class SampleStageConfig(Section):
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="How the improver's training answers are sampled from pi_sft",
    )


class AnnotateStageConfig(Section):
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig, description="The external LLM")
    prompt: str = Field("annotate_improve_v1", description="Prompt file under sgpo/prompts")
    direct_prompt: str = Field(
        "external_answer_v1", description="Prompt for the external LLM's own answer y_ext"
    )
    with_external_answer: bool = Field(
        True, description="Also ask the external LLM to answer x directly (y_ext)"
    )
    accept_truncated: bool = Field(
        False,
        description="Keep answers cut at max_tokens (finish_reason=length); off: re-ask, then drop them",
    )
    temperature: float = Field(
        0.7, ge=0, le=2, description="[0, 2], the range OpenAI-compatible servers accept"
    )
    top_p: float = Field(
        0.9, gt=0, le=1, description="Nucleus sampling of the external LLM, in (0, 1]"
    )
    max_tokens: int = Field(1024, ge=1, description="Longest answer of the external LLM in tokens")
    seed: int = Field(0, description="Seed sent to the external LLM (where it honours one)")
    min_usable_fraction: float = runtime_field(
        0.5,
        "Fail (publishing nothing) when fewer than this share of the calls gave a usable answer; 0 disables the check",
        ge=0,
        le=1,
    )
    journal_namespace: str = key_field_when_set(
        "",
        "Set to a new value (e.g. 'fresh-2') to re-ask the LLM instead of reusing journaled answers; in the "
        "cache key and the manifest when set",
    )


class PplFilterStageConfig(Section):
    iqr_k: float = Field(
        1.5, gt=0, le=100, description="Tukey fence multiplier: keep [Q1 - k IQR, Q3 + k IQR]"
    )
    max_length: int = Field(2048, ge=16, description="Longest prompt + answer scored, in tokens")
    batch_size: int = runtime_field(8, "Sequences per forward pass", ge=1)


class ImproverSFTStageConfig(TrainConfig):
    epochs: float = Field(
        3.0, gt=0, description="Passes over the training data (fractions allowed)"
    )
    targets: list[Literal["imp", "ext"]] = Field(
        default_factory=lambda: ["imp", "ext"],
        description="Which filtered responses are targets (a set)",
        min_length=1,
    )

    @field_validator("targets")
    @classmethod
    def _targets_as_a_set(cls, value: list[str]) -> list[str]:
        """[ext, imp] and [imp, ext, imp] are the same data: one canonical order, so one cache key."""
        return [t for t in ("imp", "ext") if t in value]

    prompt: str = Field("improver_v1", description="Improver training prompt (no SFT reference)")
    with_reference: bool = Field(
        False, description="All-Ref ablation: put the SFT reference in this prompt too"
    )
    reference_prompt: str = Field("refine_v1", description="Prompt used when with_reference is on")


class PairsStageConfig(Section):
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="How the policy's answers (and the refinements) are sampled",
    )
    chosen: Literal["refined", "sft"] = Field(
        "refined", description="refined: y+ from the improver; sft: y_sft (SGPO-diamond / SPIN)"
    )
    refine_with_reference: bool = Field(
        True, description="Refining prompt holds the SFT reference (No-Ref: off)"
    )
    prompt: str = Field("refine_v1", description="Refining prompt with the SFT reference")
    no_reference_prompt: str = Field(
        "improver_v1", description="Refining prompt without the reference"
    )


class DPOStageConfig(TrainConfig):
    learning_rate: float = Field(5e-7, gt=0, lt=1, description="Peak learning rate, in (0, 1)")
    # DPO's KL weight: papers use 0.01-0.5; above 10 the policy cannot move from the reference
    beta: float = Field(0.1, gt=0, le=10, description="DPO's KL weight beta, in (0, 10]")
    loss_type: str = Field(
        "sigmoid", description="TRL's DPO loss_type: sigmoid (DPO), ipo, hinge, ..."
    )
    max_length: int = Field(
        2048, ge=16, description="Longest prompt + answer in tokens; longer ones are truncated"
    )
    reference_logps: Literal["live", "cached"] = runtime_field(
        "cached",
        "cached: the reference's log-probs computed once into a cached Parquet artifact (one model in "
        "memory while training); live: a frozen reference model beside the policy",
    )
    reference_batch_size: int = runtime_field(
        8, "Sequences per forward pass when computing the reference log-probs", ge=1
    )


class DPOBaselineConfig(DPOStageConfig):
    """The DPO baseline on published preference pairs (SGPO paper: 1 epoch, lr 5e-7, beta 0.01)."""

    beta: float = Field(0.01, gt=0, le=10, description="DPO's KL weight beta, in (0, 10]")


class SpinConfig(DPOStageConfig):
    """SPIN: chosen y_sft, rejected a sample of pi_t, reference pi_t, for `iterations` rounds
    (SGPO paper: one iteration, lr 3e-7 on Qwen2.5, 5e-7 on Llama3)."""

    iterations: int = Field(
        1, ge=1, description="SPIN iterations t = 1..K (each: pairs from pi_t, DPO from pi_t)"
    )
    per_iteration: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Overrides of this section for iteration t (item t-1), e.g. the SAPO paper's SPIN baseline: "
        "[{}, {learning_rate: 1.0e-7}, {learning_rate: 1.0e-7}, {learning_rate: 1.0e-7, beta: 5.0}]",
    )

    def for_iteration(self, t: int) -> SpinConfig:
        """This section as iteration t trains with (its override applied and validated)."""
        if t > len(self.per_iteration) or not self.per_iteration[t - 1]:
            return self
        return type(self).model_validate(
            {**self.model_dump(), **self.per_iteration[t - 1], "per_iteration": []}
        )


class PairJudgeConfig(Section):
    """The pairwise judge (sgpo.evals.pairwise): AlpacaEval 2.0's protocol unless a custom prompt is chosen."""

    endpoint: EndpointConfig = Field(default_factory=EndpointConfig, description="The judge LLM")
    prompt: str = Field(
        "alpaca_eval_clf_v1",
        description="Judge prompt file under sgpo/prompts answering 'm' or 'M' (default: AlpacaEval's official one)",
    )
    top_logprobs: int = Field(
        5, ge=1, le=20, description="Top logprobs of the judge's one-token answer (official: 5)"
    )
    judge_temperature: float = Field(
        1.0, ge=0, le=2, description="Judge temperature (official: 1; only logprobs are read)"
    )
    order_seed: int = Field(
        0,
        description="Seed of upstream's per-instruction output order (AlpacaEval's rule; default 0)",
    )
    max_unlabelled_fraction: float = runtime_field(
        0.5,
        "Fail (publishing nothing) when more than this share of the judge's answers has no 'm'/'M' label; "
        "1 disables the check",
        ge=0,
        le=1,
    )
    journal_namespace: str = key_field_when_set(
        "",
        "Set to a new value to re-ask the judge instead of reusing journaled verdicts; in the cache key when set",
    )


class JudgeStageConfig(PairJudgeConfig):
    """The pipeline's last stage: the final policy's answers judged against the eval set's baselines."""

    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="How the policy answers eval prompts"
    )


class DataChecksConfig(Section):
    """Judge checks of the generated data, by the pipeline's judge (the `judge` section's endpoint and
    protocol): the paper's Table 1 and the refinement win rates of Fig. 8/10. Each is a `pairwise[...]`
    stage after the judge; paid calls, so off by default."""

    improved_data: bool = Field(
        False,
        description="Table 1: annotate's improved answer y_imp vs response B (the "
        "policy's y) and vs response A (y_sft); needs a recipe that annotates",
    )
    refinement: bool = Field(
        False,
        description="Fig. 8/10: each round's refinement y+ (chosen) vs the policy's y "
        "(rejected) and vs y_sft; needs pairs.chosen=refined",
    )
    max_rows: int | None = Field(
        None, ge=1, description="Judge the first N usable rows of each table (default: all)"
    )


# --------------------------------------------------------------------------- infrastructure


class StoreConfig(Section):
    url: str = runtime_field(
        "./.sgpo/store", "Artifact store: a folder, file://, or s3://bucket/prefix"
    )
    storage_options: dict[str, Any] = runtime_field(
        default_factory=dict,
        description="fsspec options without secrets, e.g. {client_kwargs: {endpoint_url: ...}}; "
        "credentials come from the environment (AWS_ACCESS_KEY_ID, ...)",
    )
    on_busy: Literal["wait", "fail"] = runtime_field(
        "wait",
        "Another run is computing the same stage and key: wait for it and reuse its artifact, or fail at once",
    )
    lease_timeout_s: float = runtime_field(
        300.0,
        "A stage lease whose heartbeat is older than this is stale (its holder died) and is taken over",
        gt=0,
    )
    lease_poll_s: float = runtime_field(
        2.0, "How often a waiting run checks a busy stage's lease", gt=0
    )


class TrackingConfig(Section):
    mlflow_uri: str = runtime_field(
        "sqlite:///./.sgpo/mlflow.db", "MLflow tracking URI (an http:// server in a team)"
    )
    experiment: str = runtime_field("sgpo", "MLflow experiment name")
    enabled: bool = runtime_field(True, "Log to MLflow")


class EmbeddedLLMConfig(Section):
    """The stand-in for the external LLM when an endpoint has no base_url."""

    model: str = runtime_field("base", "'base' = the pipeline's base model, or a local model dir")
    max_new_tokens_cap: int = runtime_field(
        256, "Cap on generated tokens (tiny models ramble)", ge=1
    )
    judge: Literal["model", "rule", "testbed"] = runtime_field(
        "model",
        "Judge prompts answered by the model, or by sgpo.llm.rule_judge's documented quality rule (the tiny "
        "preset: a tiny model cannot judge), or by the testbed's verifier (sgpo.llm.oracle); the judge's model name, "
        "in its cache key, says which",
    )
    annotator: Literal["model", "oracle"] = runtime_field(
        "model",
        "Annotation prompts answered by the model, or by the testbed's oracle (sgpo.llm.oracle: y_imp a "
        "minimal fix of B no better than A, y_ext the correct answer); the annotator's model name says which",
    )


class ExecutionConfig(Section):
    mode: Literal["local", "distributed"] = runtime_field(
        "local", "local: every stage in this process; distributed: GPU stages via run_deployment"
    )
    cuda_work_pool: str = runtime_field("cuda", "Work pool for GPU stages in distributed mode")
    deployment_prefix: str = runtime_field(
        "sgpo-stage", "GPU-stage deployments are named STAGE/PREFIX-STAGE (e.g. dpo/sgpo-stage-dpo)"
    )


class PipelineConfig(Section):
    """One SGPO run: base model, data, every stage's settings, and where things are kept."""

    name: str = Field("sgpo-tiny", description="Run name (MLflow run name)")
    method: str = Field(
        "sgpo",
        description="The recipe (configs/methods/NAME.yaml, merged over the preset): sgpo, sgpo-step2, "
        "sgpo-dagger, sgpo-double-dagger, sgpo-diamond, sgpo-v1..v3, all-ref, no-ref, dpo, spin",
    )
    algorithm: Literal["sgpo", "dpo", "spin", "sapo", "sft", "sft_continued"] = Field(
        "sgpo",
        description="Which DAG runs: sgpo (and its ablations), dpo (on data.prefs), spin (spin.iterations), "
        "sapo (the sapo stage on data.sapo), sft (pi_sft itself), sft_continued (more SFT of pi_sft on D_po's "
        "references: the continued-SFT control)",
    )
    sapo_start: Literal["sft", "base"] = Field(
        "sft",
        description="algorithm=sapo: start from the sft stage's policy, or from the base model when it is "
        "already an SFT model (e.g. wandb/mistral-7b-zephyr-sft)",
    )
    seed: int = Field(
        42, description="Run-level seed, kept for the record; each stage has its own seed setting"
    )
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

    @model_validator(mode="after")
    def _hardware_to_training_stages(self) -> PipelineConfig:
        if "hardware" in self.model_fields_set:
            for name in type(self).model_fields:
                section = getattr(self, name)
                if isinstance(section, TrainConfig) and "launch" not in section.model_fields_set:
                    section.launch = self.hardware.model_copy()
        return self


# --------------------------------------------------------------------------- loading


def preset_path(name: str) -> Path:
    """`tiny` -> configs/tiny.yaml; a path is returned as is."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return CONFIG_DIR / f"{name}.yaml"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} is not of the form key=value (e.g. sft.learning_rate=1e-5)"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.split("."), value


def _set_dotted(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section that `loc` points into (for 'did you mean')."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(
    err: ValidationError,
    source: str,
    model: type[BaseModel] | None = None,
    kind: str = "configuration",
) -> str:
    """One line per problem, each naming its dotted key; unknown keys get a 'did you mean'."""
    lines = [f"invalid {kind} ({source}):"]
    for e in err.errors():
        loc = tuple(str(x) for x in e["loc"])
        key = ".".join(loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(
                loc[-1], _known_keys(model or PipelineConfig, loc), n=1
            )
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def read_yaml_tree(
    source: str | Path | None, *, default: str, glob: str = "*.yaml", kind: str = "config"
) -> tuple[Path, dict]:
    """The mapping in a preset (name) or YAML file, with a clear error for each way it can be wrong."""
    path = preset_path(str(source) if source else default)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob(glob)))
        raise ConfigError(f"{kind} {str(source)!r} not found (no file {path}); presets: {known}")
    if path.is_dir():
        raise ConfigError(f"{kind} {path} is a directory, not a YAML file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{kind} {path} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{kind} {path} is not a UTF-8 text file (byte {e.start} is {raw[e.start : e.start + 1]!r}); "
            "a config is YAML text"
        ) from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(tree).__name__}")
    return path, tree


METHOD_DIR = CONFIG_DIR / "methods"


def method_names() -> list[str]:
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


def method_tree(name: str) -> dict:
    """A recipe's settings (configs/methods/NAME.yaml): which DAG and which ablation flags, never
    hyper-parameters (those belong to the model preset), so a method composes with any preset."""
    path = METHOD_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"method {name!r} is not a recipe; recipes: {', '.join(method_names())}")
    tree = yaml.safe_load(path.read_text()) or {}
    return {**tree, "method": name}


def merge_trees(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively for mappings."""
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def apply_overrides(tree: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    for item in overrides:
        parts, value = _parse_override(item)
        _set_dotted(tree, parts, value)
    return tree


def load_config(
    source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Load a preset name or YAML file, apply `key=value` overrides, validate."""
    path, tree = read_yaml_tree(source, default="tiny", glob="[!e]*.yaml")
    method = next(
        (
            _parse_override(o)[1]
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
        raise ConfigError(format_validation_error(e, str(path))) from None


def project(section: BaseModel, model: type[SectionT]) -> SectionT:
    """The part of `section` that `model` declares (e.g. the generate stage's fields of a benchmark's section)."""
    return model.model_validate({k: getattr(section, k) for k in model.model_fields})


def cache_payload(section: BaseModel) -> dict[str, Any]:
    """The section as JSON-able data without its runtime-only fields (what a cache key hashes)."""
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get(NOT_IN_CACHE_KEY):
            continue
        value = getattr(section, name)
        if extra.get(KEY_WHEN_SET) and value == field.default:
            continue
        out[name] = (
            cache_payload(value)
            if isinstance(value, BaseModel)
            else json.loads(json.dumps(value, default=str))
        )
    return out
