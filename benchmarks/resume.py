"""How much does the cache save? Cold vs warm (every stage cached) wall time of `sgpo run` on
the tiny preset, each in a fresh process (Prefect's ephemeral start-up included in both).

    python benchmarks/resume.py [key=value ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(workdir: Path, overrides: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect")}
    cmd = [
        sys.executable,
        "-m",
        "sgpo.cli.main",
        "run",
        f"store.url={workdir}/store",
        f"tracking.mlflow_uri=sqlite:///{workdir}/mlflow.db",
        *overrides,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"sgpo run failed:\n{r.stdout}\n{r.stderr}")
    return elapsed, r.stdout


def main() -> None:
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="sgpo-bench-") as d:
        work = Path(d)
        cold, _ = timed_run(work, overrides)
        warm, out = timed_run(work, overrides)
        ran = [ln for ln in out.splitlines() if ln.startswith("[sgpo] ") and " ran " in ln]
        print(f"cold run (every stage computed): {cold:7.1f} s")
        print(f"warm run (every stage cached):   {warm:7.1f} s   stages re-run: {len(ran)}")
        print(f"warm / cold = {warm / cold:.3f}   (cold is {cold / warm:.1f}x the warm run)")


if __name__ == "__main__":
    main()
