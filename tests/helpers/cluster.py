"""The commands of the team stack, shared by tests/e2e/test_cluster.py (which walks docs/cluster.md on
loopback, running the doc's commands as written) and tests/unit/deployments/test_deployments.py (which checks that
docker/compose.yaml and the Dockerfiles run nothing else, and that the doc walk has a plan for every
line of the doc). `ANY` stands for a value (host, port, URI) that differs between them.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ANY = object()

# command templates: (name, argv with ANY placeholders, whether extra trailing arguments are allowed)
SERVER = ("prefect server", ["prefect", "server", "start", "--host", ANY, "--port", ANY], False)
WORKER_CPU = (
    "cpu worker",
    ["prefect", "worker", "start", "--pool", "cpu", "--type", "process"],
    False,
)
WORKER_CUDA = (
    "cuda worker",
    ["prefect", "worker", "start", "--pool", "cuda", "--type", "process"],
    False,
)
# the doc's GPU hosts add --limit 1 (one stage at a time) and --name
WORKER_CUDA_ANY = ("cuda worker", WORKER_CUDA[1], True)
DEPLOY = ("sgpo deploy", ["sgpo", "deploy"], True)
MLFLOW = (
    "mlflow server",
    [
        "mlflow",
        "server",
        "--host",
        ANY,
        "--port",
        ANY,
        "--backend-store-uri",
        ANY,
        "--artifacts-destination",
        ANY,
    ],
    True,
)
TEMPLATES = (SERVER, WORKER_CPU, WORKER_CUDA, DEPLOY, MLFLOW)


def matches(argv: list[str], template: tuple[str, list[Any], bool]) -> bool:
    _name, tmpl, rest_ok = template
    if len(argv) < len(tmpl) or (len(argv) > len(tmpl) and not rest_ok):
        return False
    return all(t is ANY or a == t for a, t in zip(argv, tmpl))


def fill(
    template: tuple[str, list[Any], bool], *values: str, extra: tuple[str, ...] = ()
) -> list[str]:
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

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        argv = [venv_bin(argv[0]), *argv[1:]]
        p = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
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
            os.killpg(
                p.pid, signal.SIGTERM
            )  # its own group (start_new_session): only what it started
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
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


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


# --------------------------------------------------------------------------- docs/cluster.md, walked verbatim
#
# tests/e2e/test_cluster.py runs the ```bash blocks of sections 1-6 of docs/cluster.md as written, in order,
# after the substitutions below; tests/unit/deployments/test_deployments.py plans the same walk without running it (fast).
# A command line the walker does not know and that is not in SKIP fails both, so a command added to
# the doc must be added here (and is then run by the slow test).

DOC = REPO / "docs" / "cluster.md"
WALK_SECTIONS = (1, 2, 3, 4, 5, 6)

# The doc's placeholders -> this machine, applied in order to each command line (comments dropped).
# Every entry must be used by the walk. `{name}` are the walk's values (WalkValues).
SUBSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "sudo -u postgres psql",
        "psql -h 127.0.0.1 -p {pg_port} -U postgres",
        "the throwaway PostgreSQL the test starts (tests/helpers/postgres.py): its superuser, on loopback",
    ),
    ("localhost:5432", "127.0.0.1:{pg_port}", "that PostgreSQL"),
    (
        "--host 0.0.0.0 --port 4200",
        "--host 127.0.0.1 --port {api_port}",
        "loopback only, a free port",
    ),
    (
        "--host 0.0.0.0 --port 5000",
        "--host 127.0.0.1 --port {mlflow_port}",
        "loopback only, a free port",
    ),
    ("http://prefect-host:4200", "http://127.0.0.1:{api_port}", "the Prefect server started above"),
    (
        "http://mlflow-host:5000",
        "http://127.0.0.1:{mlflow_port}",
        "the MLflow server started above",
    ),
    ("AWS_ENDPOINT_URL=...", "AWS_ENDPOINT_URL={s3}", "the GPU block's 'same as above'"),
    ("http://minio:9000", "{s3}", "moto's S3 server stands in for MinIO"),
    ("AWS_ACCESS_KEY_ID=...", "AWS_ACCESS_KEY_ID=testing", "moto accepts any key"),
    ("AWS_SECRET_ACCESS_KEY=...", "AWS_SECRET_ACCESS_KEY=testing", "moto accepts any key"),
    ("/path/to/sgpo", "{repo}", "this checkout"),
    ("/var/lib/mlflow", "{mlflow_dir}", "a temporary folder"),
    (
        'Bucket="sgpo"',
        'Bucket="{bucket}"',
        "a fresh bucket per walk: nothing of another test is in it",
    ),
    ("s3://sgpo/", "s3://{bucket}/", "the same fresh bucket"),
    (
        "--config qwen2.5-7b",
        "--config tiny",
        "a 7B model cannot run on CPU; tiny has the same stages",
    ),
)
# Left in a command after the substitutions, these mean the doc grew a placeholder the walk does not know.
PLACEHOLDERS = re.compile(
    r"prefect-host|mlflow-host|minio|/path/to|\.\.\.|0\.0\.0\.0|qwen2\.5-7b|/var/lib|"
    r":4200\b|:5000\b|:5432\b|s3://sgpo/|[<>]|\$"
)

# Command lines (comments dropped, words joined by single spaces) not run here, each with the reason.
SKIP: dict[str, str] = {
    "pip install -e .": "the test runs in an environment that has sgpo installed from this checkout",
    "sudo apt-get install -y postgresql": "Debian's package is installed by scripts/test.sh; the test "
    "starts a cluster of its own of it (tests/helpers/postgres.py), not the system's service",
    "mc mb local/sgpo": "MinIO's client; the doc's boto3 line (section 2) creates the bucket on moto's S3 instead",
}

# The machine (shell) each ```bash block runs in: (section, n-th block of the section) -> machine.
# Blocks on one machine share one environment (its exports accumulate, in doc order). A new machine
# starts from the harness environment plus the exports of "On every other machine" (block (1, 1)),
# except the Prefect server's host. A block not listed here fails the walk.
OTHER_MACHINES = (1, 1)
MACHINES: dict[tuple[int, int], str] = {
    (1, 0): "prefect-host",
    (1, 1): "operator",  # "on every other machine": the shell sections 2-4 and 6 are typed into
    (2, 0): "operator",
    (2, 1): "operator",
    (3, 0): "operator",  # the MLflow server runs with section 2's store credentials
    (4, 0): "operator",
    (5, 0): "cpu-machine",
    (5, 1): "gpu-machine",
    (6, 0): "operator",
}

# What the walker knows how to run: template (see matches) -> how. "background": a long-running service,
# started as `Procs` name; "run": a command that must exit 0 (its output is kept for the test).
BUCKET = ("create bucket", ["python", "-c", ANY], False)
DATABASE = ("create database", ["psql", "-h", ANY, "-p", ANY, "-U", "postgres"], True)
RUN_DEPLOYMENT = ("deployment run", ["prefect", "deployment", "run", ANY], True)
KNOWN: tuple[tuple[tuple[str, list[Any], bool], str, str], ...] = (
    (SERVER, "background", "server"),
    (MLFLOW, "background", "mlflow"),
    (WORKER_CPU, "background", "worker-cpu"),
    (WORKER_CUDA_ANY, "background", "worker-cuda"),
    (DEPLOY, "run", "deploy"),
    (DATABASE, "run", "database"),
    (BUCKET, "run", "bucket"),
    (RUN_DEPLOYMENT, "run", "deployment-run"),
)


class DocDrift(AssertionError):
    """docs/cluster.md has a line the walker cannot follow."""


@dataclass
class Step:
    section: int
    block: int
    lineno: int
    machine: str
    line: str  # the doc's command, as written (comment dropped)
    kind: str  # export | background | run | skip
    argv: list[str] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    name: str = ""  # the Procs / result name
    reason: str = ""  # why skipped


def doc_blocks(text: str) -> list[tuple[int, int, list[tuple[int, str]]]]:
    """(section, n-th block, [(line number, line)]) of every ```bash block of the numbered sections
    WALK_SECTIONS; backslash continuations joined into one line."""
    out: list[tuple[int, int, list[tuple[int, str]]]] = []
    section, count, block, lines = None, 0, None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        if block is not None:
            if line.strip() == "```":
                out.append((section, block, lines))
                block = None
            elif lines and lines[-1][1].endswith("\\"):
                lines[-1] = (lines[-1][0], lines[-1][1][:-1].rstrip() + " " + line.strip())
            else:
                lines.append((lineno, line))
            continue
        if line.startswith("## "):
            m = re.match(r"## (\d+)\. ", line)
            section = int(m.group(1)) if m and int(m.group(1)) in WALK_SECTIONS else None
            count = 0
        elif line.strip() == "```bash" and section is not None:
            block, lines = count, []
            count += 1
    found = {s for s, _, _ in out}
    if not found >= {1, 2, 3, 4, 5, 6}:
        raise DocDrift(
            f"docs/cluster.md: no ```bash block in section(s) {sorted(set(WALK_SECTIONS) - found)}"
        )
    return out


def plan_walk(values: dict[str, str], text: str | None = None) -> tuple[list[Step], set[str]]:
    """The steps of the walk, in doc order, and the substitutions used. Raises DocDrift for a block
    without a machine, a line the walker does not know, a placeholder left after the substitutions,
    or a SUBSTITUTIONS / SKIP entry the doc no longer needs."""
    text = DOC.read_text() if text is None else text
    steps: list[Step] = []
    used_subs: set[str] = set()
    used_skips: set[str] = set()
    for section, block, lines in doc_blocks(text):
        machine = MACHINES.get((section, block))
        if machine is None:
            raise DocDrift(
                f"docs/cluster.md section {section}, bash block {block + 1}: which machine does it "
                "run on? add it to MACHINES in tests/helpers/cluster.py"
            )
        for lineno, raw in lines:
            words = shlex.split(raw, comments=True)
            if not words:
                continue
            line = " ".join(words)
            where = f"docs/cluster.md:{lineno} (section {section})"
            if line in SKIP:
                used_skips.add(line)
                steps.append(Step(section, block, lineno, machine, line, "skip", reason=SKIP[line]))
                continue
            cmd = shlex.join(words)
            for old, new, _why in SUBSTITUTIONS:
                if old in cmd:
                    used_subs.add(old)
                    cmd = cmd.replace(old, new.format(**values))
            argv = shlex.split(cmd)
            left = PLACEHOLDERS.search(" ".join(argv))
            if left:
                raise DocDrift(
                    f"{where}: {left.group(0)!r} left in {raw.strip()!r} after the substitutions "
                    "(add one to SUBSTITUTIONS in tests/helpers/cluster.py)"
                )
            if argv[0] == "export":
                pairs = [a.partition("=") for a in argv[1:]]
                if not pairs or any(not k or not eq for k, eq, _ in pairs):
                    raise DocDrift(f"{where}: cannot follow {raw.strip()!r}")
                steps.append(
                    Step(
                        section,
                        block,
                        lineno,
                        machine,
                        line,
                        "export",
                        exports={k: v for k, _, v in pairs},
                    )
                )
                continue
            known = next(((kind, name) for t, kind, name in KNOWN if matches(argv, t)), None)
            if known is None:
                raise DocDrift(
                    f"{where}: the cluster walk does not know {raw.strip()!r}: teach it (KNOWN) or "
                    "skip it with a reason (SKIP) in tests/helpers/cluster.py"
                )
            steps.append(
                Step(section, block, lineno, machine, line, known[0], argv=argv, name=known[1])
            )
    unused = [old for old, _, _ in SUBSTITUTIONS if old not in used_subs]
    stale = [s for s in SKIP if s not in used_skips]
    if unused or stale:
        raise DocDrift(
            f"no longer in docs/cluster.md: substitutions {unused}, skipped lines {stale} "
            "(remove them from tests/helpers/cluster.py)"
        )
    return steps, used_subs


def doc_retry_command(text: str | None = None) -> list[str]:
    """Section 7's CLI retry, `prefect flow-run retry <id>`, without the id."""
    text = DOC.read_text() if text is None else text
    m = re.search(r"`(prefect flow-run retry) <id>`", text)
    if not m:
        raise DocDrift("docs/cluster.md section 7 no longer names `prefect flow-run retry <id>`")
    return m.group(1).split()


class DocWalk:
    """Runs plan_walk's steps: exports into their machine's environment, services in the background
    (each waited for when `ready` names a check), commands in the foreground (exit 0 required)."""

    def __init__(
        self,
        procs: Procs,
        tmp: Path,
        values: dict[str, str],
        base_env: dict[str, str],
        machine_env: Callable[[str], dict[str, str]],
        ready: dict[str, Callable[[], Any]],
    ):
        self.procs, self.tmp, self.values = procs, tmp, values
        self.base_env, self.machine_env, self.ready = base_env, machine_env, ready
        self.envs: dict[str, dict[str, str]] = {}
        self.exports: dict[tuple[int, int], dict[str, str]] = {}
        self.results: dict[str, subprocess.CompletedProcess] = {}
        self.steps, _ = plan_walk(values)

    def env(self, step: Step) -> dict[str, str]:
        if step.machine not in self.envs:
            start = dict(self.base_env)
            if (step.section, step.block) != OTHER_MACHINES and step.machine != MACHINES[(1, 0)]:
                start.update(self.exports.get(OTHER_MACHINES, {}))
            start.update(
                self.machine_env(step.machine)
            )  # the harness's own (homes, log levels, poll period)
            self.envs[step.machine] = start
        return self.envs[step.machine]

    def cwd(self, machine: str) -> Path:
        d = self.tmp / f"cwd-{machine}"
        d.mkdir(exist_ok=True)
        return d

    def run(self) -> DocWalk:
        for step in self.steps:
            env = self.env(step)
            where = f"docs/cluster.md:{step.lineno} ({step.machine}): {step.line}"
            if step.kind == "skip":
                continue
            if step.kind == "export":
                env.update(step.exports)
                self.exports.setdefault((step.section, step.block), {}).update(step.exports)
            elif step.kind == "background":
                self.procs.start(step.name, step.argv, env, cwd=self.cwd(step.machine))
                if step.name in self.ready:
                    try:
                        wait_for(self.ready[step.name], 180, where)
                    except TimeoutError as e:
                        raise AssertionError(f"{e}\n{self.procs.log(step.name)[-4000:]}") from None
            else:
                r = subprocess.run(
                    [venv_bin(step.argv[0]), *step.argv[1:]],
                    env=env,
                    cwd=self.cwd(step.machine),
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert r.returncode == 0, f"{where}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
                self.results[step.name] = r
        return self
