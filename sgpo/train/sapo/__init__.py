"""SAPO (self-augmented preference optimisation) as a library the `sapo` stage calls.

    from sgpo.train.sapo import SAPOConfig, train_sapo
    result = train_sapo(sft_dir, rows, SAPOConfig(...), out_dir=..., checkpoint_url=...)

Modules: config (the pydantic section), segment (cut y+ = A + B + C, splice y-), buffer (FIFO
replay buffer, use-weighted draws), ema (EMA / reference rules), generate (batched B'
regeneration, vLLM hook), checkpoint (resumable, pickle-free checkpoints), train (the loop).
Only `config` is imported eagerly; torch and transformers load when training starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sgpo.config import SAPOConfig, SAPOConfigError

if TYPE_CHECKING:
    from sgpo.train.sapo.loop import SAPOInterrupted, SAPOResult, train_sapo

__all__ = ["SAPOConfig", "SAPOConfigError", "SAPOInterrupted", "SAPOResult", "train_sapo"]


def __getattr__(name: str) -> Any:
    if name in ("train_sapo", "SAPOResult", "SAPOInterrupted"):
        from sgpo.train.sapo import loop as train

        return getattr(train, name)
    raise AttributeError(name)
