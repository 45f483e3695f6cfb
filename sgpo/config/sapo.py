"""SAPO's configuration: one pydantic section whose defaults are the published runs' settings.

The SAPO paper (Sec. 5.1) and its published code (github.com/yinyueqin/SAPO: configs/config*.yaml,
scripts/sapo_*.sh, sapo/alignment/trainer.py) agree on: max prompt 1792 / max total 2048 tokens,
4 epochs, segment |B| = 256 tokens, replay buffer 2000, EMA alpha 0.5, DPO beta 0.1 lr 5e-7
RMSprop (linear schedule, 10% warmup), ORPO lambda 0.05 lr 5e-6 (inverse-sqrt schedule, 100
warmup steps), sampling temperature 0.7 / top-p 0.95 / top-k 50. Where they differ the default is
the code's (docs/fidelity.md):
- batch: the runs are 8 processes x 8 rows, each process with its own buffer, so one optimiser
  step trains on 64 pairs; here `buffers` x `batch_size` = 8 x 8, whatever the number of processes
  (a process holds buffers / processes of them), so every step count below means the same thing
  on 1 or 8 processes;
- EMA: the paper says every two steps; the code updates it before every step
  (gradient_accumulation_steps 1 in its configs), so `ema_every` = 1;
- reference: ema-ref is "updated periodically" in the paper; the code copies the EMA into the
  reference every 108 steps of 64 pairs, so `reference_update_every` = 108 (policy-ref alike);
- prompts of 1792 tokens or more are dropped (the code's filter), not truncated;
- ORPO's optimiser is AdamW here (`adamw_torch`); the code's configs name bitsandbytes'
  8-bit AdamW (`adamw_bnb_8bit`), which needs CUDA: set `sapo.orpo.optimizer=adamw_bnb_8bit` for it.

Fields made with `runtime_field` (checkpoint interval, logging) change how the run goes, not what
it produces, and stay out of the stage's cache key; the generation batch size and the micro-batch
size change what it produces and are in it.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sgpo.config.infra import LaunchConfig
from sgpo.config.sections import Section, runtime_field


class SAPOConfigError(ValueError):
    """A SAPO config or dataset that cannot be trained on; the message starts with the config key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class SAPODPOConfig(Section):
    beta: float = Field(0.1, gt=0, description="DPO beta (paper: 0.1)")
    learning_rate: float = Field(5e-7, gt=0, description="Peak learning rate (paper: 5e-7)")
    optimizer: str = Field("rmsprop", description="A transformers `optim` name (paper: rmsprop)")
    lr_scheduler_type: str = Field(
        "linear", description="transformers scheduler name (paper: linear)"
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Warmup as a fraction of all steps (paper: 0.1)"
    )
    warmup_steps: int = Field(
        0, ge=0, description="Warmup steps; when > 0 it replaces warmup_ratio"
    )
    loss_type: str = Field("sigmoid", description="TRL DPO loss type (paper: sigmoid)")


class SAPOORPOConfig(Section):
    lam: float = Field(
        0.05, gt=0, description="ORPO lambda, weight of the odds-ratio term (paper: 0.05)"
    )
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate (paper: 5e-6)")
    optimizer: str = Field(
        "adamw_torch",
        description="A transformers `optim` name (paper: AdamW; published configs: adamw_bnb_8bit)",
    )
    lr_scheduler_type: str = Field(
        "inverse_sqrt", description="transformers scheduler name (paper: inverse_sqrt)"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of all steps")
    warmup_steps: int = Field(
        100, ge=0, description="Warmup steps; when > 0 it replaces warmup_ratio (paper: 100)"
    )


class SAPOConfig(Section):
    """One SAPO run: segment regeneration by the EMA model, FIFO replay buffer, DPO or ORPO steps."""

    loss: Literal["dpo", "orpo"] = Field("dpo", description="Preference loss of each training step")
    dpo: SAPODPOConfig = Field(default_factory=SAPODPOConfig, description="Used when loss = dpo")
    orpo: SAPOORPOConfig = Field(
        default_factory=SAPOORPOConfig, description="Used when loss = orpo"
    )

    epochs: int = Field(4, ge=1, description="Passes over the (x, y+) rows (paper: 4)")
    max_steps: int = Field(-1, description="Stop after N training steps (-1: all epochs)")
    batch_size: int = Field(
        8,
        ge=1,
        description="Rows (x, y+) each replay buffer takes per step, and pairs drawn from each buffer per "
        "step (published: 8 per process)",
    )
    buffers: int = Field(
        8,
        ge=1,
        description="Replay buffers: a step trains on batch_size x buffers pairs, batch_size drawn from "
        "each (published: one buffer per process, 8 processes); any number of processes that divides "
        "it gives the same run",
    )
    max_prompt_length: int = Field(
        1792, ge=1, description="Longest prompt in tokens (paper: 1792); see long_prompts"
    )
    long_prompts: Literal["drop", "truncate"] = Field(
        "drop",
        description="Rows whose prompt has max_prompt_length tokens or more: drop them (the published "
        "code's filter) or keep the end of the prompt",
    )
    max_length: int = Field(2048, ge=2, description="Prompt + answer tokens kept (paper: 2048)")
    weight_decay: float = Field(0.0, ge=0, description="Optimiser weight decay")
    max_grad_norm: float = Field(
        1.0, ge=0, description="Gradient clipping norm (0: none); transformers' default"
    )
    seed: int = Field(42, description="Seeds data order, cut positions, sampling and buffer draws")

    # segment regeneration
    segment: bool = Field(
        True,
        description="Regenerate a segment B of y+ (false: the 'no segment' ablation, regenerate all of y+)",
    )
    segment_length: int = Field(
        256, ge=1, description="|B| in tokens (paper: 256; ablations 64 / 128)"
    )
    min_tail_tokens: int = Field(
        3,
        ge=0,
        description="Cut positions leave at least this many tokens after B when the answer is long enough (published code: 3)",
    )
    rejected_per_prompt: int = Field(
        1, ge=1, description="Rejected answers generated per row (ablations 1 / 4 / 8)"
    )
    sample_every: int = Field(
        1, ge=1, description="Regenerate and push to the buffer every N steps (paper: 1)"
    )
    rejected_by: Literal["ema", "policy"] = Field(
        "ema",
        description="Model that regenerates B': the EMA model (SAPO) or the current policy (the on-policy ablation)",
    )
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of B' (0: greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of B'")
    top_k: int = Field(50, ge=0, description="Top-k sampling of B' (0: off)")

    # replay buffer and EMA
    buffer_capacity: int = Field(
        2000, ge=1, description="Size of each FIFO replay buffer (paper: 2000)"
    )
    ema_alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="theta_ema <- alpha * theta_ema + (1 - alpha) * theta (paper: 0.5)",
    )
    ema_every: int = Field(
        1,
        ge=1,
        description="EMA update every N training steps (published code: 1; the paper's text says 2)",
    )

    # DPO reference
    reference: Literal["ema", "fixed", "policy"] = Field(
        "ema",
        description="DPO reference: the EMA weights (default), the SFT model (fixed), or a copy of the policy",
    )
    reference_update_every: int = Field(
        108,
        ge=1,
        description="reference=policy / ema: copy the policy / the EMA model into the reference every K "
        "steps (published code: 108 steps of 64 pairs); reference=ema with K = 1 uses the EMA model itself",
    )

    # runtime only: not in the cache key
    # in the key (sapo code version 2): SAPO's generation seeds each batch (seed + batch start), and
    # micro-batches change ORPO's loss
    generation_batch_size: int = Field(
        16, ge=1, description="Rows per batched generate call (each batch seeded: in the key)"
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Split each training batch into micro-batches of this size (memory). The same loss "
        "for DPO (a mean over pairs, up to float rounding); for ORPO the NLL term becomes a mean of "
        "per-micro-batch token means (in the key)",
    )
    checkpoint_every: int = runtime_field(
        50, "Write a resumable checkpoint every N steps (0: only on SIGTERM and at the end)", ge=0
    )
    keep_checkpoints: int = runtime_field(
        2, "Complete checkpoints kept in the checkpoint folder", ge=1
    )
    logging_steps: int = runtime_field(10, "Send metrics to the callback every N steps", ge=1)
    launch: LaunchConfig = runtime_field(
        default_factory=LaunchConfig,
        description="How the stage is launched (default: the recipe's `hardware`): DDP processes, "
        "each holding buffers / processes replay buffers",
    )

    @model_validator(mode="after")
    def _check(self) -> SAPOConfig:
        check_config(self)
        return self

    @property
    def learning_rate(self) -> float:
        return self.dpo.learning_rate if self.loss == "dpo" else self.orpo.learning_rate

    @property
    def pairs_per_step(self) -> int:
        """Pairs one optimiser step trains on (the published runs' 64)."""
        return self.batch_size * self.buffers


def check_config(cfg: SAPOConfig) -> None:
    """Config-only checks (also run by train_sapo before any work); each error names its key."""
    if cfg.segment and cfg.segment_length > cfg.max_length:
        raise SAPOConfigError(
            "segment_length", f"{cfg.segment_length} is larger than max_length {cfg.max_length}"
        )
    if cfg.buffer_capacity < cfg.batch_size:
        raise SAPOConfigError(
            "buffer_capacity", f"{cfg.buffer_capacity} is smaller than batch_size {cfg.batch_size}"
        )
    if cfg.max_prompt_length >= cfg.max_length:
        raise SAPOConfigError(
            "max_prompt_length",
            f"{cfg.max_prompt_length} leaves no room for an answer within max_length {cfg.max_length}",
        )
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise SAPOConfigError(
            "max_steps", f"{cfg.max_steps}: use -1 (all epochs) or a positive number"
        )
