"""Test-wide isolation (own Prefect home, caches and credentials; no network, no hub), the tiers, and
the fixtures the integration and end-to-end tiers share.

Tiers are folders: every test module lives in `tests/unit/`, `tests/integration/` or `tests/e2e/`, and
each test is marked `unit`, `integration` or `e2e` by its folder, so `pytest -m unit` and
`pytest tests/unit` select the same tests. `slow` and `vllm` stay opt-in: the default `-m` (pyproject.toml)
leaves them out, and so does an `-m` that names a tier but not them (`-m integration` runs no slow test;
`-m "integration and slow"` does)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from tests.helpers.net import free_port

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="sgpo-tests-"))
# Set before anything imports prefect: its settings are read at import time.
os.environ.update(
    PREFECT_HOME=str(_SESSION_TMP / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL="WARNING",
    SGPO_CACHE_DIR=str(_SESSION_TMP / "cache"),
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    TOKENIZERS_PARALLELISM="false",
    TRANSFORMERS_VERBOSITY="error",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    # One CPU thread in the test process and everything it starts: a test that compares an in-process
    # run with a subprocess's byte for byte needs the same thread count in both (float sums depend
    # on it; pytest-randomly's order made the in-process count vary), and CI's 2 shared cores run
    # faster without spinning OpenMP threads (sgpo.core.threads; tests of `threads` set their own).
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("OPENAI_API_KEY", None)

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")
OPT_IN = ("slow", "vllm")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see the tier markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path.resolve()
        if not path.is_relative_to(TESTS):
            continue
        where = path.relative_to(TESTS).parts
        if len(where) < 2 or where[0] not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test module lives in tests/unit/, tests/integration/ or "
                "tests/e2e/ (docs/usage.md, Tests)"
            )
        item.add_marker(where[0])
    expr = config.option.markexpr or ""
    names = set(re.findall(r"\w+", expr))
    if names & set(TIERS):
        skipped = set(OPT_IN) - names
        drop = [i for i in items if any(i.get_closest_marker(m) for m in skipped)]
        if drop:
            config.hook.pytest_deselected(items=drop)
            dropped = set(map(id, drop))
            items[:] = [i for i in items if id(i) not in dropped]


@pytest.fixture
def shared_data() -> Path:
    from sgpo.data.shared import shared_data_dir

    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(
            f"reference data folder {d} is absent (set SGPO_SHARED_DATA to the shared/data folder)"
        )
    return d


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol endpoint on loopback (moto's server), with a bucket `sgpo-test`."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="sgpo-test")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny kit's model, built once per session."""
    from sgpo.models.tinykit import build_bundled_tiny_model

    out = _SESSION_TMP / "tiny-model"
    if not (out / "config.json").exists():
        build_bundled_tiny_model(out)
    return out


@pytest.fixture
def no_network(monkeypatch):
    """No network: every connection attempt is recorded and refused, and the hub client is not in
    offline mode (offline mode would answer before the network: this is a laptop without one, where
    the hub's client raises httpx's ConnectError, which the report did not catch). Returns the
    attempts."""
    import socket

    import huggingface_hub.constants

    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test: no network)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # TRL's trainers ping the hub's telemetry from a thread (not a model lookup; it fails silently)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts
