"""The commands of the team stack, shared by tests/test_cluster.py (which runs them on loopback)
and tests/test_deployments.py (which checks that docker/compose.yaml and the Dockerfiles run
nothing else). `ANY` stands for a value (host, port, URI) that differs between the two.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
ANY = object()

# command templates: (name, argv with ANY placeholders, whether extra trailing arguments are allowed)
SERVER = ("prefect server", ["prefect", "server", "start", "--host", ANY, "--port", ANY], False)
WORKER_CPU = ("cpu worker", ["prefect", "worker", "start", "--pool", "cpu", "--type", "process"], False)
WORKER_CUDA = ("cuda worker", ["prefect", "worker", "start", "--pool", "cuda", "--type", "process"], False)
DEPLOY = ("sgpo deploy", ["sgpo", "deploy"], True)
MLFLOW = ("mlflow server", ["mlflow", "server", "--host", ANY, "--port", ANY, "--backend-store-uri", ANY,
                            "--artifacts-destination", ANY], True)
TEMPLATES = (SERVER, WORKER_CPU, WORKER_CUDA, DEPLOY, MLFLOW)


def matches(argv: list[str], template: tuple[str, list[Any], bool]) -> bool:
    _name, tmpl, rest_ok = template
    if len(argv) < len(tmpl) or (len(argv) > len(tmpl) and not rest_ok):
        return False
    return all(t is ANY or a == t for a, t in zip(argv, tmpl))


def fill(template: tuple[str, list[Any], bool], *values: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The template with its ANY slots filled in order, plus extra trailing arguments."""
    it = iter(values)
    argv = [next(it) if t is ANY else t for t in template[1]]
    assert next(it, None) is None, "too many values"
    assert not extra or template[2], f"{template[0]} takes no extra arguments"
    return [*argv, *extra]


def venv_bin(program: str) -> str:
    """`prefect` / `mlflow` / `sgpo` of the running interpreter's environment."""
    p = Path(sys.executable).parent / program
    return str(p) if p.exists() else program


class Procs:
    """Subprocesses started by a test, each in its own session, stopped (with their children) at the end."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        argv = [venv_bin(argv[0]), *argv[1:]]
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        f = self.logdir / f"{name}.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def stop(self, name: str, timeout: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL to whatever is left of it (helpers, flow-run children)."""
        p = self.procs.pop(name, None)
        if p is None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)  # its own group (start_new_session): only what it started
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # not up yet
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as r:
        return 200 <= r.status < 300


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants (a node dying under a job); returns the pids."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        os.kill(pid, signal.SIGKILL)
        return [pid]
    root = psutil.Process(pid)
    victims = [root, *root.children(recursive=True)]
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in victims]
