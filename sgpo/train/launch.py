"""How a training stage runs on several processes: `accelerate launch` (DDP, FSDP, DeepSpeed ZeRO-3).

A training stage's `launch` section (or the recipe's `hardware`, see sgpo.config.pipeline.LaunchConfig)
says how many processes and which accelerate config. One process and a plain config: the stage trains
in its own process. Otherwise the plan is

    accelerate launch --config_file <cfg> --num_processes N --main_process_port P -m <stage module> ...

and the stage framework runs it (sgpo.core.launch). Every bad launch is refused before any process
starts (`accelerate_plan`): an accelerate config file that does not exist, more processes than
devices, DeepSpeed without the package, FSDP/DeepSpeed on a machine without CUDA.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from typing import Any

from sgpo.config import CONFIG_DIR, LaunchConfig
from sgpo.core.ranks import Launcher, LaunchPlan, in_launched_rank, world_size
from sgpo.core.threads import run_threads, thread_env, visible_cpus

ACCELERATE_CONFIG_DIR = CONFIG_DIR / "accelerate"


class LaunchConfigError(ValueError):
    """A launch that cannot work (missing file, too many processes, missing package): refused before any work."""


def resolve_accelerate_config(name: str) -> Path:
    """A file path as given, or a name/file among the packaged accelerate configs (`zero3`, `zero3.yaml`)."""
    candidates = [Path(name), ACCELERATE_CONFIG_DIR / name, ACCELERATE_CONFIG_DIR / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIG_DIR.glob("*.yaml")))
    raise LaunchConfigError(
        f"accelerate config {name!r} does not exist (looked for {', '.join(map(str, candidates[:2]))}, "
        f"...); the ones in {ACCELERATE_CONFIG_DIR}: {known}"
    )


def read_accelerate_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise LaunchConfigError(f"accelerate config {path} cannot be read as YAML: {e}") from None
    if not isinstance(tree, dict):
        raise LaunchConfigError(
            f"accelerate config {path} must hold a mapping, not {type(tree).__name__}"
        )
    return tree


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_plan(cfg: Any, where: str) -> LaunchPlan | None:
    """The Launcher's plan of a training stage: its section's `launch` (see `launch_plan`)."""
    return launch_plan(cfg.launch, where=f"{where}.launch")


def launch_plan(launch: LaunchConfig, *, where: str = "launch") -> LaunchPlan | None:
    """None: train in this process. Else the checked plan; every bad input is a LaunchConfigError
    naming `where` (e.g. `sft.launch`)."""
    if in_launched_rank():
        return None
    if launch.accelerate_config is None and (launch.num_processes or 1) == 1:
        return None
    path = resolve_accelerate_config(launch.accelerate_config or "ddp")
    tree = read_accelerate_config(path)
    dist = str(tree.get("distributed_type", "NO")).upper()
    gpus = visible_gpus()
    if launch.num_processes is not None:
        n = launch.num_processes
    elif gpus:
        n = gpus
    else:
        n = int(tree.get("num_processes") or 1) if dist in ("MULTI_GPU", "MULTI_CPU") else 1
    if dist == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise LaunchConfigError(
            f"{where}.accelerate_config {path.name} uses DeepSpeed (distributed_type: DEEPSPEED) but the deepspeed "
            "package is not installed here: `pip install deepspeed` on the GPU worker, or use fsdp / ddp"
        )
    if dist in ("DEEPSPEED", "FSDP") and not gpus:
        raise LaunchConfigError(
            f"{where}.accelerate_config {path.name} ({dist}) needs CUDA GPUs and this machine has none; "
            "on CPU use the ddp config (gloo)"
        )
    devices = gpus if gpus else visible_cpus()
    kind = "GPUs" if gpus else "CPU cores (no GPU is visible)"
    if n > devices:
        raise LaunchConfigError(
            f"{where}.num_processes = {n} but this machine has {devices} {kind}: at most one process per device"
        )
    if n == 1 and dist not in ("DEEPSPEED", "FSDP"):
        return None  # one plain process: nothing to launch
    port = launch.main_process_port or free_port()
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(path),
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--main_process_port",
        str(port),
    ]
    # CPU ranks share the run's threads (sgpo.core.threads), or their OpenMP threads fight over the cores
    env = {} if gpus else thread_env(run_threads(), n)
    return LaunchPlan(
        command=command,
        num_processes=n,
        description=f"accelerate launch, {path.name} ({dist})",
        env=env,
    )


def main_process_value(value: Any) -> Any:
    """Rank 0's `value` on every rank of a launched stage (the process group is set up here if
    needed); the value itself outside a launch."""
    if world_size() <= 1:
        return value
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState(cpu=not torch.cuda.is_available())
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


ACCELERATE = Launcher(plan=accelerate_plan, main_process_value=main_process_value)
