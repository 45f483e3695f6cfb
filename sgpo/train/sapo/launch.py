"""How the `sapo` stage runs on several processes: accelerate's DDP launch, one replica of policy,
EMA and reference per process, and `buffers / processes` replay buffers in each.

The plan is the training stages' own (`sgpo.train.launch.launch_plan`, from `sapo.launch` or the
recipe's `hardware`) with two more refusals, before any process starts: a sharded launch
(DeepSpeed / FSDP; the loop keeps whole models on every process and gathers nothing), and a number
of processes that does not divide `sapo.buffers` (each process must hold whole buffers, so that
the run is the same on any such number of processes).
"""

from __future__ import annotations

from typing import Any

from sgpo.core.ranks import Launcher, LaunchPlan
from sgpo.train.launch import (
    LaunchConfigError,
    launch_plan,
    main_process_value,
    read_accelerate_config,
    resolve_accelerate_config,
)

SHARDED = ("DEEPSPEED", "FSDP")


def sapo_plan(cfg: Any, where: str) -> LaunchPlan | None:
    """The checked plan of a SAPO run (None: this process trains alone)."""
    if cfg.launch.accelerate_config is not None:
        path = resolve_accelerate_config(cfg.launch.accelerate_config)
        dist = str(read_accelerate_config(path).get("distributed_type", "NO")).upper()
        if dist in SHARDED:
            raise LaunchConfigError(
                f"{where}.launch.accelerate_config {path.name} shards the model ({dist}); the SAPO loop "
                "keeps whole policy, EMA and reference models on every process: use ddp"
            )
    plan = launch_plan(cfg.launch, where=f"{where}.launch")
    if plan is not None and cfg.buffers % plan.num_processes:
        raise LaunchConfigError(
            f"{where}.buffers = {cfg.buffers} is not a multiple of the {plan.num_processes} processes "
            f"of {where}.launch: each process holds buffers / processes replay buffers"
        )
    return plan


SAPO_ACCELERATE = Launcher(plan=sapo_plan, main_process_value=main_process_value)
