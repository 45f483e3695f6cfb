"""The pipeline stages' own sections: training, sampling, annotation, filtering, pairs, DPO and its
baselines, the judge and the data checks. Hyper-parameters only; hardware is in `infra`."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from sgpo.config.infra import EndpointConfig, LaunchConfig
from sgpo.config.sections import Section, key_field_when_set, optional_field, runtime_field


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


# TRL / transformers training arguments that sgpo sets from its own fields (`trainers.common_args`
# and the stages): a `trl` entry may not set them, and is told the field to use instead (None: sgpo
# decides it, e.g. where the trainer writes and what it reports to).
MANAGED_TRAINING_ARGS: dict[str, str | None] = {
    "output_dir": None,
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "effective_batch_size",
    "lr_scheduler_type": "lr_scheduler_type",
    "warmup_steps": "warmup_ratio",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "data_seed": "seed",
    "bf16": "bf16",
    "use_cpu": None,
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps",
    "save_strategy": None,
    "report_to": None,
    "disable_tqdm": None,
    "dataloader_num_workers": None,
    "max_length": "max_length",
    "beta": "beta",
    "loss_type": "loss_type",
    "precompute_ref_log_probs": "reference_logps",
    "completion_only_loss": None,
}


def check_trl_arguments(args: dict[str, Any], trl_class: str) -> dict[str, Any]:
    """`args` when every name is a field of TRL's `trl_class` (SFTConfig, DPOConfig) that sgpo does not
    set itself; else a ValueError naming each problem (unknown names with the closest field).
    Imports trl (and torch) only when something is passed through."""
    if not args:
        return args
    import dataclasses

    try:
        import trl
    except ImportError:
        raise ValueError(f"trl is not installed: {sorted(args)} cannot be checked") from None
    fields = {f.name for f in dataclasses.fields(getattr(trl, trl_class))}
    problems = []
    for name in args:
        if name in MANAGED_TRAINING_ARGS:
            own = MANAGED_TRAINING_ARGS[name]
            problems.append(
                f"{name} is set by sgpo" + (f": use the section's {own!r}" if own else "")
            )
        elif name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            problems.append(
                f"{name!r} is not a field of trl.{trl_class} (trl {trl.__version__})"
                + (f"; did you mean {close[0]!r}?" if close else "")
            )
    if problems:
        raise ValueError("; ".join(problems))
    return args


class TrainConfig(Section):
    """Training hyper-parameters; hardware (accelerate/DeepSpeed) lives in separate files."""

    trl_arguments: ClassVar[str] = "SFTConfig"  # the TRL dataclass `trl` entries are fields of

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
    optimizer: str | None = optional_field(
        "A transformers `optim` name (e.g. rmsprop, the SAPO paper's DPO optimiser); none: "
        "transformers' default AdamW"
    )
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay")
    max_steps: int = Field(-1, ge=-1, description="Stop after N optimiser steps (-1: full epochs)")
    seed: int = Field(42, description="Training seed (data order, dropout)")
    # in the key when set: bf16 arithmetic gives other weights than fp32 (not a rounding of them)
    bf16: bool = key_field_when_set(False, "bf16 mixed precision (GPU; ignored on CPU)")
    gradient_checkpointing: bool = runtime_field(False, "Trade compute for memory")
    logging_steps: int = runtime_field(1, "Log metrics every N steps", ge=1)
    launch: LaunchConfig = runtime_field(
        default_factory=LaunchConfig,
        description="How the stage is launched (default: the recipe's `hardware`)",
    )
    lora: LoRAConfig | None = optional_field(
        "LoRA / QLoRA instead of full fine-tuning (`lora=true`: defaults)"
    )
    trl: dict[str, Any] = key_field_when_set(
        {},
        "Any other TRL training argument by name (a field of trl.SFTConfig, or trl.DPOConfig in a DPO "
        "section), e.g. {optim: adafactor, label_smoothing: 0.1}: checked against TRL's dataclass "
        "when the config loads, passed to the trainer as given; in the cache key when set",
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_switch(cls, v: Any) -> Any:
        return {} if v is True else (None if v is False else v)

    @field_validator("trl")
    @classmethod
    def _known_trl_arguments(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_trl_arguments(v, cls.trl_arguments)


class SFTStageConfig(TrainConfig):
    assistant_turns: Literal["final", "all"] = key_field_when_set(
        "final",
        "Which answers of an example's conversation are SFT targets: final (the example's answer; one "
        "epoch = one pass over the prepared rows) or all (every assistant turn of the conversation "
        "too: with the data's `turns: last`, an epoch is one pass over the dialogues and each answer "
        "is learned once, the SFT unit of a dialogue corpus such as UltraChat; docs/fidelity.md)",
    )
    chat_template: str | None = optional_field(
        "Chat template for a base model without one (e.g. Meta-Llama-3-8B): 'chatml' or a Jinja string. "
        "Set on the SFT tokenizer and saved with pi_sft, so training, sampling, pairs and judging all use it",
    )


class SamplingConfig(Section):
    """Generation settings; the paper samples everything at temperature 0.7, top-p 0.9."""

    # in the key: back-ends draw other random numbers for the same seed (and round differently)
    backend: Literal["transformers", "vllm", "vllm_server", "openai"] = Field(
        "transformers",
        description="Generation back-end: transformers (in-process HF), vllm (in-process vllm.LLM), "
        "vllm_server (a vLLM OpenAI server the stage starts for its checkpoint, or the one at "
        "base_url), openai (any server at base_url)",
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
    # runtime: every back-end seeds sample k of prompt i with seed + i*n + k, whatever the batch
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
    vllm_dtype: str = Field("auto", description="vLLM --dtype (float32 on CPU); in the key")
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


def max_empty_fraction_field() -> Any:
    return runtime_field(
        0.5,
        "Fail (publishing nothing) when more than this share of the generated answers is empty or "
        "whitespace (they are dropped and counted either way); 1 publishes whatever is left",
        ge=0,
        le=1,
    )


class SampleStageConfig(Section):
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="How the improver's training answers are sampled from pi_sft",
    )
    max_empty_fraction: float = max_empty_fraction_field()


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
        "Fail (publishing nothing, and reusing no stored result) when fewer than this share of the calls "
        "gave a usable answer; 0 disables the check",
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
    max_empty_fraction: float = max_empty_fraction_field()


class DPOStageConfig(TrainConfig):
    trl_arguments: ClassVar[str] = "DPOConfig"

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


class RefLogpsConfig(Section):
    """What the DPO reference's log-probs depend on: the `ref_logps` stage's part of a DPO section
    (`dpo`, `dpo_baseline`, `spin`), so another beta, learning rate or loss reuses them."""

    max_length: int = Field(
        2048, ge=16, description="Longest prompt + answer in tokens; longer ones are truncated"
    )
    reference_batch_size: int = runtime_field(
        8, "Sequences per forward pass when computing the reference log-probs", ge=1
    )
    bf16: bool = key_field_when_set(False, "bf16 mixed precision (GPU; ignored on CPU)")
    launch: LaunchConfig = runtime_field(
        default_factory=LaunchConfig, description="How the stage is launched (the DPO section's)"
    )
    trl: dict[str, Any] = key_field_when_set(
        {},
        "The DPO section's other TRL arguments (some change the reference's log-probs, e.g. "
        "ld_alpha); in the cache key when set",
    )

    @field_validator("trl")
    @classmethod
    def _known_trl_arguments(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_trl_arguments(v, "DPOConfig")


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
        description="Overrides of this section for iteration t (item t-1), e.g. the SAPO paper's SPIN baseline "
        "(Sec. 5.1: lr 5e-7, 5e-7, 1e-7, 1e-7; beta 5.0 in the last): "
        "[{}, {}, {learning_rate: 1.0e-7}, {learning_rate: 1.0e-7, beta: 5.0}]",
    )

    def for_iteration(self, t: int) -> SpinConfig:
        """This section as iteration t trains with (its override applied and validated)."""
        if t > len(self.per_iteration) or not self.per_iteration[t - 1]:
            return self
        return type(self).model_validate(
            {**self.model_dump(), **self.per_iteration[t - 1], "per_iteration": []}
        )


class ORPOStageConfig(TrainConfig):
    """ORPO (odds-ratio preference optimisation, TRL's ORPOTrainer): SFT loss on the chosen answer plus
    lambda times the odds-ratio term; no reference model. The SAPO paper's ORPO baseline: lambda
    0.05, lr 5e-6, AdamW, 3 epochs (Mistral) / 4 (Llama-3), from the raw base model."""

    lam: float = Field(
        0.05, gt=0, le=10, description="lambda: weight of the odds-ratio term (TRL's `beta`)"
    )
    learning_rate: float = Field(5e-6, gt=0, lt=1, description="Peak learning rate, in (0, 1)")
    lr_scheduler_type: str = Field(
        "inverse_sqrt",
        description="transformers' lr scheduler (ORPO's Capybara recipe: inverse_sqrt)",
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Warmup as a fraction of the steps (0 when warmup_steps is set)",
    )
    warmup_steps: int = Field(
        100, ge=0, description="Warmup steps (ORPO's Capybara recipe: 100); 0: use warmup_ratio"
    )
    max_length: int = Field(
        2048, ge=16, description="Longest prompt + answer in tokens; longer ones are truncated"
    )
    # in the key, unlike DPO's: TRL's ORPOTrainer averages its loss per micro-batch, so the
    # micro-batch size changes the update (measured: 2 instead of 8 moved the tiny model's weight
    # update by 44%; tests/integration/test_runtime_fields.py::test_orpo_runtime_fields)
    per_device_batch_size: int = Field(
        8, ge=1, description="Micro-batch size per device (changes ORPO's update: in the cache key)"
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> ORPOStageConfig:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"warmup_steps {self.warmup_steps} and warmup_ratio {self.warmup_ratio} are both set: "
                "one would be ignored (set the other to 0)"
            )
        return self


class SpinORPOConfig(ORPOStageConfig):
    """SPIN with ORPO steps (the SAPO paper's SPIN-ORPO baseline): chosen y_sft, rejected a sample of
    pi_t, an ORPO step from pi_t, for `iterations` rounds."""

    iterations: int = Field(
        1, ge=1, description="SPIN iterations t = 1..K (each: pairs from pi_t, ORPO from pi_t)"
    )
    per_iteration: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Overrides of this section for iteration t (item t-1), e.g. "
        "[{}, {}, {learning_rate: 1.0e-7}, {learning_rate: 1.0e-7, lam: 5.0}]",
    )

    def for_iteration(self, t: int) -> SpinORPOConfig:
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
        0.1,
        "Fail (publishing nothing, and reusing no stored result) when more than this share of the "
        "judge's answers has no 'm'/'M' label; 1 disables the check",
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
        description="Fig. 8/10: each round's refinement y+ (chosen) vs the initial policy's "
        "refinement of the same answer (a refine stage) and vs y_sft; needs pairs.chosen=refined",
    )
    max_rows: int | None = Field(
        None, ge=1, description="Judge the first N usable rows of each table (default: all)"
    )
