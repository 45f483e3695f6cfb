"""SAPO's configuration: one pydantic section with the paper's defaults.

Paper settings (Yin et al., "Self-Augmented Preference Optimization", and the published run scripts):
max prompt 1792 / max total 2048 tokens, 4 epochs, segment |B| = 256 tokens, replay buffer 2000,
EMA alpha 0.5 updated every 2 steps, DPO beta 0.1 lr 5e-7 RMSprop (linear schedule, 10% warmup),
ORPO lambda 0.05 lr 5e-6 AdamW (inverse-sqrt schedule, 100 warmup steps), batch 8, sampling
temperature 0.7 / top-p 0.95 / top-k 50.

Fields made with `runtime_field` (checkpoint interval, logging) change how the run goes, not what
it produces, and stay out of the stage's cache key; the generation batch size and the micro-batch
size change what it produces and are in it.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    optimizer: str = Field("adamw_torch", description="A transformers `optim` name (paper: AdamW)")
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
        description="Rows (x, y+) taken per iteration, and pairs drawn from the buffer per training step (paper: 8)",
    )
    max_prompt_length: int = Field(
        1792, ge=1, description="Prompt tokens kept (the end of longer prompts) (paper: 1792)"
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
    buffer_capacity: int = Field(2000, ge=1, description="FIFO replay buffer size (paper: 2000)")
    ema_alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="theta_ema <- alpha * theta_ema + (1 - alpha) * theta (paper: 0.5)",
    )
    ema_every: int = Field(2, ge=1, description="EMA update every N training steps (paper: 2)")

    # DPO reference
    reference: Literal["ema", "fixed", "policy"] = Field(
        "ema",
        description="DPO reference: the EMA weights (default), the SFT model (fixed), or a copy of the policy",
    )
    reference_update_every: int = Field(
        1,
        ge=1,
        description="reference=policy: copy the policy every K steps; reference=ema: K > 1 keeps a copy of the EMA refreshed every K steps (the published code used 108), 1 uses the EMA model itself",
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

    @model_validator(mode="after")
    def _check(self) -> SAPOConfig:
        check_config(self)
        return self

    @property
    def learning_rate(self) -> float:
        return self.dpo.learning_rate if self.loss == "dpo" else self.orpo.learning_rate


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
