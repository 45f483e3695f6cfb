"""The EMA model and the DPO reference: update rules and schedules.

    theta_ema <- alpha * theta_ema + (1 - alpha) * theta      (alpha 0.5, every 2 steps in the paper)

The in-place parameter update is TRL's `SyncRefModelCallback.sync_target_model` (its mixup
weight is the weight of the NEW parameters, i.e. 1 - alpha here), so the maths lives in TRL;
this module only says when it runs. Steps count finished optimiser steps (1, 2, ...).

Reference strategies (the DPO reference model; ORPO has none):
- `ema`    : the EMA weights. reference_update_every = 1 uses the EMA model itself (no copy);
             K > 1 keeps a separate copy refreshed from the EMA every K steps (the published
             code refreshed every 108 steps).
- `fixed`  : the SFT model, never updated.
- `policy` : a copy of the policy, refreshed every K steps.
"""

from __future__ import annotations


def ema_value(old: float, new: float, alpha: float) -> float:
    """One EMA step on a number: what `ema_update` does to each parameter entry."""
    return alpha * old + (1.0 - alpha) * new


def ema_due(step: int, every: int) -> bool:
    return step % every == 0


def reference_refresh_due(strategy: str, step: int, every: int) -> bool:
    """Does the separate reference copy get refreshed after `step`? (never for `fixed`, and never
    for `ema` with every == 1, where the reference IS the EMA model)."""
    if strategy == "fixed":
        return False
    if strategy == "ema" and every == 1:
        return False
    return step % every == 0


def reference_source(strategy: str) -> str | None:
    """Which model a refresh copies from."""
    return {"ema": "ema", "policy": "policy", "fixed": None}[strategy]


def ema_update(ema_model, policy, alpha: float) -> None:
    """theta_ema <- alpha * theta_ema + (1 - alpha) * theta, in place (TRL's soft update)."""
    import torch
    from accelerate.state import AcceleratorState
    from trl.trainer.callbacks import SyncRefModelCallback

    with torch.no_grad():
        if (
            AcceleratorState._shared_state
        ):  # an accelerator exists: TRL's path (gathers ZeRO-3 shards)
            SyncRefModelCallback.sync_target_model(policy, ema_model, 1.0 - alpha)
        else:  # plain modules (unit tests): TRL's same update without the accelerate lookup
            SyncRefModelCallback._sync_target_model(policy, ema_model, 1.0 - alpha)


def copy_weights(src, dst) -> None:
    """dst's parameters become src's, exactly (a hard refresh of a reference copy)."""
    import torch

    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters(), strict=True):
            d.copy_(s)
