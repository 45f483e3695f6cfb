"""CPU threads of every process sgpo starts: one setting (`threads: auto | N` at the top of the
pipeline's and the evaluation's config), resolved here, applied the same way everywhere.

Why it matters: torch's default is one OpenMP thread per core, and OpenMP threads spin while they
wait. On a machine whose cores are shared (other jobs, several ranks of a launch, the embedded LLM
server beside a stage) a spinning thread steals the core it waits for: on a 2-core machine under
load, 2 default threads made SmolLM2's generation 5-9x slower than 1 thread (docs/usage.md,
benchmarks/threads.py). So:

* `auto` (the default): an `OMP_NUM_THREADS` already in the environment (a scheduler's or the user's
  choice) wins; otherwise the cores this process may use (`os.sched_getaffinity`, bounded by a cgroup
  CPU quota when there is one);
* `N`: N threads, whatever the environment says;
* several processes of one launch (CPU ranks of `accelerate launch`) share the total: each gets
  `total // processes`, at least one;
* with more than one thread, `OMP_WAIT_POLICY=PASSIVE` (unless set): waiting threads sleep instead of
  spinning, so a busy core is not fought over (it costs little on an idle machine: see
  benchmarks/threads.py).

`configure_threads` applies it to this process: environment variables that torch / OpenMP / MKL read
when they load (so call it before anything imports torch: the CLI does, first thing), plus
`torch.set_num_threads` when torch is already loaded. This module never imports torch itself (the
stage framework imports no ML library); children started later (accelerate ranks, a vLLM server)
inherit the environment, and `thread_env` gives the environment of one of `processes` ranks.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

ThreadsSetting = Literal["auto"] | int

THREAD_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WAIT_POLICY_VAR = "OMP_WAIT_POLICY"
TOTAL_VAR = "SGPO_THREADS"  # the run's resolved total, for the processes it launches


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Cores allowed by a cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`) CPU quota, None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def visible_cpus() -> int:
    """The cores this process may run on: its CPU affinity, bounded by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(environ.get(name, ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def resolve_threads(
    setting: ThreadsSetting = "auto", environ: Mapping[str, str] | None = None
) -> int:
    """The run's total number of CPU threads for `setting` (see the module docstring)."""
    env = os.environ if environ is None else environ
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ValueError(f"threads must be 'auto' or a whole number >= 1, not {setting!r}")
        return setting
    return _int_env(env, "OMP_NUM_THREADS") or visible_cpus()


def thread_env(
    total: int, processes: int = 1, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of one of `processes` processes sharing `total` threads."""
    env = os.environ if environ is None else environ
    n = max(1, total // max(1, processes))
    out = {name: str(n) for name in THREAD_COUNT_VARS}
    out[TOTAL_VAR] = str(n)
    if n > 1:
        out[WAIT_POLICY_VAR] = env.get(WAIT_POLICY_VAR) or "PASSIVE"
    return out


def parse_threads(text: str) -> ThreadsSetting:
    """`auto` or N from a command line (argparse `type=`: a ValueError becomes its usage error)."""
    if text == "auto":
        return "auto"
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def run_threads(environ: Mapping[str, str] | None = None) -> int:
    """The total this run resolved (`configure_threads`), else what `auto` gives here."""
    env = os.environ if environ is None else environ
    return _int_env(env, TOTAL_VAR) or resolve_threads("auto", env)


def configure_threads(setting: ThreadsSetting = "auto") -> int:
    """Apply `setting` to this process (and so to the processes it starts); returns the thread count."""
    n = resolve_threads(setting)
    os.environ.update(thread_env(n))
    torch = sys.modules.get("torch")  # already loaded: its pool has read the environment; tell it
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
