"""Two runs of one stage on one store: one computes, the other waits and reuses its artifact (issue 12, item 7).

Real processes (`python -m tasks.annotate`) against a real local OpenAI-compatible server that
counts requests; S3 leases against moto's real S3 server (conditional PUTs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.llm import EchoBackend

REPO = Path(__file__).resolve().parents[3]
N_SAMPLES = 6  # 2 calls each (imp, ext)


class GatedBackend(EchoBackend):
    """Echo, but every request waits until the test opens the gate; records each request's last message."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.seen: list[str] = []

    def chat(self, messages, **kw):
        with self._lock:
            self.seen.append(messages[-1]["content"])
        assert self.gate.wait(300), "gate never opened"
        return super().chat(messages, **kw)


def _samples(store_dir: Path):
    import pyarrow as pa

    from artifacts.store import ArtifactStore

    rows = [
        {
            "prompt_id": str(i),
            "prompt": f"Explain topic {i}.",
            "reference": f"Reference answer {i}.",
            "policy": f"Policy answer {i}.",
        }
        for i in range(N_SAMPLES)
    ]
    return ArtifactStore(str(store_dir)).publish_table(
        "sample", "s" * 64, pa.Table.from_pylist(rows), manifest={}
    )


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(REPO),
    }


def _annotate_cmd(store: Path, url: str, samples_uri: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tasks.annotate",
        "tiny",
        f"store.url={store}",
        "tracking.enabled=false",
        f"annotate.endpoint.base_url={url}",
        "annotate.endpoint.model=fake",
        "annotate.endpoint.max_concurrency=2",
        "store.lease_poll_s=0.2",
        *extra,
        "--samples",
        samples_uri,
    ]


def _wait_for(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_processes_on_one_stage_pay_each_call_once(tmp_path):
    from sgpo.llm.server import build_app, running_server

    store = tmp_path / "store"
    samples = _samples(store)
    backend = GatedBackend()
    with running_server(build_app(backend, model_name="fake")) as url:
        cmd = _annotate_cmd(store, url, samples.uri)
        err_a, err_b = (tmp_path / "a.err").open("w+"), (tmp_path / "b.err").open("w+")
        a = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err_a, text=True, cwd=tmp_path, env=_env(tmp_path)
        )
        _wait_for(
            lambda: len(backend.seen) >= 1 or a.poll() is not None, 180, "run A's first request"
        )
        assert a.poll() is None, Path(err_a.name).read_text()[-3000:]
        b = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err_b, text=True, cwd=tmp_path, env=_env(tmp_path)
        )
        _wait_for(
            lambda: (
                "waiting for another run" in Path(err_b.name).read_text() or b.poll() is not None
            ),
            180,
            "run B to wait for run A",
        )
        assert b.poll() is None, Path(err_b.name).read_text()[-3000:]
        assert (
            f"pid {a.pid} on {socket.gethostname()}" in Path(err_b.name).read_text()
        )  # who holds it
        backend.gate.set()
        out_a, _ = a.communicate(timeout=300)
        out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0, Path(err_a.name).read_text()[-3000:]
    assert b.returncode == 0, Path(err_b.name).read_text()[-3000:]
    ref_a, ref_b = (json.loads(o.strip().splitlines()[-1]) for o in (out_a, out_b))
    assert ref_a == ref_b  # the same artifact: B reused A's (produced_by, hash, uri all equal)
    # every call was sent exactly once: 2 per sample, no message twice
    assert len(backend.seen) == 2 * N_SAMPLES and len(set(backend.seen)) == 2 * N_SAMPLES
    assert ref_a["summary"]["sent"] == 2 * N_SAMPLES
    assert not list(store.rglob("_lease.json*"))  # released


def test_on_busy_fail_fails_at_once_naming_the_holder(tmp_path):
    from artifacts.lease import Lease
    from artifacts.store import ArtifactStore
    from sgpo.config import load_config
    from sgpo.llm.server import build_app, running_server
    from tasks import get_stage

    store = tmp_path / "store"
    samples = _samples(store)
    backend = EchoBackend()
    with running_server(build_app(backend, model_name="fake")) as url:
        cfg = load_config(
            "tiny", [f"annotate.endpoint.base_url={url}", "annotate.endpoint.model=fake"]
        ).annotate
        key = get_stage("annotate").cache_key(cfg, {"samples": samples})
        held = Lease(ArtifactStore(str(store)), "annotate", key, run_id="other-run")
        assert held.try_acquire() is None
        try:
            out = subprocess.run(
                _annotate_cmd(store, url, samples.uri, "store.on_busy=fail"),
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=_env(tmp_path),
                timeout=300,
            )
        finally:
            held.release()
    assert out.returncode == 1
    assert "another run is computing this stage" in out.stderr and "run other-run" in out.stderr, (
        out.stderr[-2000:]
    )
    assert f"pid {os.getpid()}" in out.stderr and "store.on_busy=fail" in out.stderr
    assert backend.calls == 0


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("how", ["dead_pid", "old_heartbeat"])
def test_a_stale_lease_is_taken_over(tmp_path, how):
    from artifacts.lease import LEASE_FILE
    from artifacts.store import ArtifactStore
    from sgpo.config import StoreConfig, load_config
    from sgpo.core import StageContext, run_stage
    from sgpo.llm.server import build_app, running_server
    from tasks import get_stage

    store = tmp_path / "store"
    samples = _samples(store)
    backend = EchoBackend()
    with running_server(build_app(backend, model_name="fake")) as url:
        cfg = load_config(
            "tiny", [f"annotate.endpoint.base_url={url}", "annotate.endpoint.model=fake"]
        ).annotate
        st = get_stage("annotate")
        key = st.cache_key(cfg, {"samples": samples})
        folder = Path(
            ArtifactStore(str(store)).artifact_url("annotate", key).removeprefix("file://")
        )
        folder.mkdir(parents=True)
        now = time.time()
        stale = (
            {
                "pid": _dead_pid(),
                "host": socket.gethostname(),
                "heartbeat_at": now,
                "started_at": now,
            }
            if how == "dead_pid"
            else {
                "pid": 1,
                "host": "another-host",
                "heartbeat_at": now - 120,
                "started_at": now - 500,
            }
        )
        (folder / LEASE_FILE).write_text(
            json.dumps({**stale, "token": "old", "run_id": "dead-run"})
        )
        ctx = StageContext(
            store=StoreConfig(url=str(store), lease_timeout_s=60, lease_poll_s=0.1), run_id="r2"
        )
        t0 = time.monotonic()
        ref = run_stage(st, cfg, ctx, {"samples": samples})
    assert time.monotonic() - t0 < 60  # not waiting out a timeout
    assert ref.produced_by == "r2" and backend.calls == 2 * N_SAMPLES
    assert not (folder / LEASE_FILE).exists()


def test_s3_leases_are_conditional_puts(s3_endpoint):
    """On moto's S3 server: one holder at a time, a stale one taken over by exactly one of two contenders."""
    from artifacts.lease import LEASE_FILE, Lease
    from artifacts.store import ArtifactStore

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    url = f"s3://sgpo-test/lease-{time.time_ns()}"
    stores = [ArtifactStore(url, opts) for _ in range(3)]
    key = "e" * 64
    a = Lease(stores[0], "judge", key, timeout_s=60)
    b = Lease(stores[1], "judge", key, timeout_s=60)
    assert a.try_acquire() is None
    holder = b.try_acquire()
    assert holder is not None and holder["token"] == a.token
    a.release()
    assert b.try_acquire() is None
    # b "dies": its heartbeat stops and is old; two contenders race for the takeover
    b._stop.set()
    b._thread.join()
    path = b.path
    body = json.loads(stores[2].fs.cat_file(path))
    stores[2].fs.pipe_file(path, json.dumps({**body, "heartbeat_at": time.time() - 3600}).encode())
    c, d = (
        Lease(stores[0], "judge", key, timeout_s=60),
        Lease(stores[2], "judge", key, timeout_s=60),
    )
    stale, stale_etag = d._read()  # d sees the stale lease ...
    assert d._stale(stale)
    assert c.try_acquire() is None  # ... but c takes it over first
    assert d._take_over(stale, stale_etag) is False  # If-Match on the stale ETag: 412, c keeps it
    assert d.try_acquire()["token"] == c.token
    winner = c
    stores[2].fs.invalidate_cache(path)
    assert json.loads(stores[2].fs.cat_file(path))["token"] == winner.token
    winner.release()
    stores[2].fs.invalidate_cache(path)
    assert not stores[2].fs.exists(path) and path.endswith(LEASE_FILE)
