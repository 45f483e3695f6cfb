"""Launching a training stage under `accelerate launch` (DDP, FSDP, DeepSpeed ZeRO-3).

A training stage's `launch` section (or the recipe's `hardware`, see sgpo.config.pipeline.LaunchConfig) says how
many processes and which accelerate config. One process and a plain config: the stage trains in its
own process (`Stage.run` calls the function). Otherwise `Stage.run` hands over to `launch_stage`:

    accelerate launch --config_file <cfg> --num_processes N --main_process_port P \\
        -m tasks.<stage> --launch-spec SPEC.json --<input> URI ...

SPEC.json holds the stage's config section, the StageContext and the parent's cache key; every rank
(`stage_main` -> `Stage.run_rank`) rebuilds the same section from it, checks that it computes the same
key, and runs the stage's function; only rank 0 tracks and publishes (`Job.is_main_process`). The
parent then reads the artifact back from the store by key. A rank that fails writes its error to
`rank<R>.error.json` beside the spec; the parent raises `StageLaunchError` with the first failed
rank's error and the tail of the launch's output.

Every bad launch is refused before any process starts (`launch_plan`): an accelerate config file that
does not exist, more processes than devices, DeepSpeed without the package, FSDP/DeepSpeed on a
machine without CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from artifacts.refs import ArtifactRef
    from sgpo.config.pipeline import LaunchConfig
    from sgpo.core.stage import Stage, StageContext

REPO_DIR = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIG_DIR = REPO_DIR / "configs" / "accelerate"
SPEC_ENV = "SGPO_LAUNCH_SPEC"  # set in the launched ranks (and so never launched again)
TAIL_CHARS = 4000


class LaunchConfigError(ValueError):
    """A launch that cannot work (missing file, too many processes, missing package): refused before any work."""


class StageLaunchError(RuntimeError):
    """A launched rank failed; the message holds that rank's error and the launch output's tail."""


@dataclass(frozen=True)
class LaunchPlan:
    accelerate_config: Path
    num_processes: int
    distributed_type: str
    port: int

    def command(
        self, stage: str, spec: Path, inputs: Mapping[str, ArtifactRef], params: Mapping[str, Any]
    ) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(self.accelerate_config),
            "--num_processes",
            str(self.num_processes),
            "--num_machines",
            "1",
            "--main_process_port",
            str(self.port),
            "-m",
            f"tasks.{stage}",
            "--launch-spec",
            str(spec),
        ]
        for name, ref in inputs.items():
            cmd += [f"--{name}", ref.uri]
        for name, value in params.items():
            cmd += [f"--{name}", str(value)]
        return cmd


def in_launched_rank() -> bool:
    """Inside a launch: ours (the spec), or one started outside sgpo (torchrun/accelerate over several nodes)."""
    return bool(os.environ.get(SPEC_ENV)) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def resolve_accelerate_config(name: str) -> Path:
    """A file path as given, or a name/file in configs/accelerate (`zero3`, `zero3.yaml`)."""
    candidates = [
        Path(name),
        ACCELERATE_CONFIG_DIR / name,
        ACCELERATE_CONFIG_DIR / f"{name}.yaml",
        REPO_DIR / name,
    ]
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


def launch_plan(launch: LaunchConfig, *, where: str = "launch") -> LaunchPlan | None:
    """None: train in this process. Else the checked plan; every bad input is a LaunchConfigError."""
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
    devices = gpus if gpus else (os.cpu_count() or 1)
    kind = "GPUs" if gpus else "CPU cores (no GPU is visible)"
    if n > devices:
        raise LaunchConfigError(
            f"{where}.num_processes = {n} but this machine has {devices} {kind}: at most one process per device"
        )
    if n == 1 and dist not in ("DEEPSPEED", "FSDP"):
        return None  # one plain process: nothing to launch
    return LaunchPlan(
        accelerate_config=path,
        num_processes=n,
        distributed_type=dist,
        port=launch.main_process_port or free_port(),
    )


def _first_rank_error(folder: Path) -> dict[str, Any] | None:
    errors = []
    for p in folder.glob("rank*.error.json"):
        try:
            errors.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    # the earliest failure is the cause; the others usually follow from it (a collective that lost a peer)
    return min(errors, key=lambda e: (e.get("time", 0), e.get("rank", 0))) if errors else None


def write_rank_error(exc: BaseException) -> None:
    """In a launched rank: record this rank's error beside the spec for the parent."""
    import traceback

    spec = os.environ.get(SPEC_ENV)
    if not spec:
        return
    rank = process_rank()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    record = {
        "rank": rank,
        "time": time.time(),
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": text[-TAIL_CHARS:],
    }
    try:
        (Path(spec).parent / f"rank{rank}.error.json").write_text(json.dumps(record))
    except OSError:
        pass


def launch_stage(
    st: Stage,
    plan: LaunchPlan,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef],
    params: Mapping[str, Any],
    key: str,
    *,
    log: Any = None,
) -> ArtifactRef:
    """Run the stage under accelerate launch; the artifact rank 0 published (read back by key)."""
    store = ctx.open_store()
    for (
        ref
    ) in inputs.values():  # fetch remote checkpoints once here, not once per rank at the same time
        if ref.kind == "model":
            store.model_dir(ref)
    with tempfile.TemporaryDirectory(prefix=f"sgpo-launch-{st.name}-") as tmp:
        folder = Path(tmp)
        spec = folder / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "stage": st.name,
                    "key": key,
                    "cfg": cfg.model_dump(mode="json"),
                    "ctx": ctx.model_dump(mode="json"),
                    "params": dict(params),
                }
            )
        )
        cmd = plan.command(st.name, spec, inputs, params)
        env = {
            **os.environ,
            SPEC_ENV: str(spec),
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_DIR)]
                + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
            ),
        }
        if not visible_gpus():
            env.setdefault("OMP_NUM_THREADS", "1")
        out_path = folder / "launch.log"
        if log is not None:
            log.info(
                "%s: accelerate launch, %d processes, %s (%s)",
                st.name,
                plan.num_processes,
                plan.accelerate_config.name,
                plan.distributed_type,
            )
        t0 = time.perf_counter()
        with open(out_path, "wb") as out:
            rc = subprocess.run(
                cmd, cwd=str(REPO_DIR), env=env, stdout=out, stderr=subprocess.STDOUT
            ).returncode
        tail = out_path.read_text(errors="replace")[-TAIL_CHARS:]
        if rc != 0:
            err = _first_rank_error(folder)
            if err is not None:
                raise StageLaunchError(
                    f"stage {st.name}: rank {err['rank']} of {plan.num_processes} failed: {err['type']}: {err['message']}\n"
                    f"--- rank {err['rank']} traceback (tail) ---\n{err['traceback']}\n--- launch output (tail) ---\n{tail}"
                )
            raise StageLaunchError(
                f"stage {st.name}: accelerate launch exited with status {rc} (no rank reported an "
                f"error: killed? out of memory?)\n--- launch output (tail) ---\n{tail}"
            )
        ref = store.find(st.name, key)
        if ref is None:
            raise StageLaunchError(
                f"stage {st.name}: the launched processes exited 0 but rank 0 published no artifact "
                f"for key {key[:16]}\n--- launch output (tail) ---\n{tail}"
            )
        if log is not None:
            log.info(
                "%s: launched training finished in %.1fs -> %s",
                st.name,
                time.perf_counter() - t0,
                ref.uri,
            )
        return ref
