"""Running one stage on several processes: the ranks start, each runs the stage's function, rank 0
publishes, and the parent reads the artifact back by key.

A stage that can run on several processes declares a `Launcher` (sgpo.core.ranks); when its plan
says so, `run_stage` hands over to `launch_stage`, which runs the plan's command followed by

    -m <the stage's module> --launch-spec SPEC.json --<input> URI ...

SPEC.json holds the stage's config section, the StageContext and the parent's cache key; every rank
(`stage_main` -> `run_rank`) rebuilds the same section from it, checks that it computes the same key,
and runs the stage's function; only rank 0 tracks and publishes (`Job.is_main_process`). A rank that
fails writes its error to `rank<R>.error.json` beside the spec; the parent raises
`StageLaunchError` with the first failed rank's error and the tail of the launch's output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.core.context import StageContext
from sgpo.core.ranks import SPEC_ENV, LaunchPlan, rank
from sgpo.core.stage import Stage

TAIL_CHARS = 4000


class StageLaunchError(RuntimeError):
    """A launched rank failed; the message holds that rank's error and the launch output's tail."""


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
    spec = os.environ.get(SPEC_ENV)
    if not spec:
        return
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    record = {
        "rank": rank(),
        "time": time.time(),
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": text[-TAIL_CHARS:],
    }
    try:
        (Path(spec).parent / f"rank{rank()}.error.json").write_text(json.dumps(record))
    except OSError:
        pass


def _import_root(module: str) -> str:
    """The folder the stage's module was imported from: first on the ranks' path, so they run the
    code this process runs (an installed package, a checkout, PYTHONPATH alike). A stage run as
    `python -m tasks.sft` is `__main__`, not `tasks.sft`, in sys.modules: then its spec says where."""
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", None) or importlib.util.find_spec(module).origin
    path = Path(file or "").resolve()  # <root>/tasks/sft.py for tasks.sft
    return str(path.parents[len(module.split(".")) - 1])


def launch_stage(
    st: Stage,
    plan: LaunchPlan,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef | None],
    params: Mapping[str, Any],
    key: str,
    *,
    log: Any = None,
) -> ArtifactRef:
    """Run the stage on the plan's processes; the artifact rank 0 published (read back by key)."""
    store = ctx.open_store()
    given = {n: r for n, r in inputs.items() if r is not None}
    for (
        ref
    ) in given.values():  # fetch remote checkpoints once here, not once per rank at the same time
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
        cmd = [*plan.command, "-m", st.module, "--launch-spec", str(spec)]
        for name, ref in given.items():
            cmd += [f"--{name}", ref.uri]
        for name, value in params.items():
            cmd += [f"--{name}", str(value)]
        path = [_import_root(st.module), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, **plan.env, SPEC_ENV: str(spec), "PYTHONPATH": os.pathsep.join(path)}
        out_path = folder / "launch.log"
        if log is not None:
            log.info("%s: %d processes, %s", st.name, plan.num_processes, plan.description)
        t0 = time.perf_counter()
        with open(out_path, "wb") as out:
            rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        tail = out_path.read_text(errors="replace")[-TAIL_CHARS:]
        if rc != 0:
            err = _first_rank_error(folder)
            if err is not None:
                raise StageLaunchError(
                    f"stage {st.name}: rank {err['rank']} of {plan.num_processes} failed: "
                    f"{err['type']}: {err['message']}\n"
                    f"--- rank {err['rank']} traceback (tail) ---\n{err['traceback']}\n"
                    f"--- launch output (tail) ---\n{tail}"
                )
            raise StageLaunchError(
                f"stage {st.name}: the launch exited with status {rc} (no rank reported an "
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
                "%s: launched run finished in %.1fs -> %s",
                st.name,
                time.perf_counter() - t0,
                ref.uri,
            )
        return ref
