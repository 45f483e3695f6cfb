"""Where this process stands in a launch of several processes, and how a stage is launched.

The one place that reads the launch environment (RANK, WORLD_SIZE, the spec of sgpo's own launch).
How several processes are started and agree (accelerate, torch.distributed) is not the framework's
business: a stage that can run on several processes declares a `Launcher` (the train package's
accelerate launcher), whose hooks say how.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SPEC_ENV = "SGPO_LAUNCH_SPEC"  # set in the ranks sgpo launches (and so never launched again)


def rank() -> int:
    """This process's rank in a launch (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes in this launch (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def in_launched_rank() -> bool:
    """Inside a launch: sgpo's own (its spec is set), or one started outside sgpo (torchrun or
    accelerate over several nodes)."""
    return bool(os.environ.get(SPEC_ENV)) or world_size() > 1


@dataclass(frozen=True)
class LaunchPlan:
    """How to start the ranks of one stage run: the launcher's command line up to the module to run
    (e.g. `python -m accelerate.commands.launch --config_file ... --num_processes N`), checked."""

    command: list[str]
    num_processes: int
    description: str  # for the log line, e.g. "zero3.yaml (DEEPSPEED)"
    env: Mapping[str, str] = field(default_factory=dict)  # set in the ranks' environment


@dataclass(frozen=True)
class Launcher:
    """A stage's hooks for running on several processes.

    `plan(cfg, where)`: None to run in this process, else the checked LaunchPlan; a launch that cannot
    work raises (before any process starts). `where` names the config key in messages.
    `main_process_value(value)`: rank 0's `value` on every rank (a collective: every rank calls it)."""

    plan: Callable[[Any, str], LaunchPlan | None]
    main_process_value: Callable[[Any], Any]
