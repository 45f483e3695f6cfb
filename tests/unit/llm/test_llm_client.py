"""The durable LLM client without a server: request hashes, a journal with a torn last line, and the
errors of an endpoint nobody listens on and of a missing API key. Against a real HTTP server with a
fake model (retries, faults, journals, kills): tests/integration/llm/test_llm_client.py."""

from __future__ import annotations

import socket

import pytest

from sgpo.llm.client import (
    CallRecord,
    ChatRequest,
    EndpointConfig,
    LLMCallError,
    LocalJournal,
    call_all,
)
from tests.helpers.llm import make_requests


def endpoint(url: str | None, **kw) -> EndpointConfig:
    base = dict(
        base_url=url,
        model="fake",
        api_key_env="SGPO_TEST_NO_SUCH_KEY",
        max_concurrency=8,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        timeout_s=10,
    )
    return EndpointConfig(**{**base, **kw})


def test_request_hash_is_stable_and_discriminating():
    r = make_requests(1)[0]
    h = r.request_hash(model="m", namespace="ns")
    assert h == ChatRequest(**r.model_dump()).request_hash(model="m", namespace="ns")
    assert (
        len(
            {
                h,
                r.request_hash(model="m2", namespace="ns"),
                r.request_hash(model="m", namespace="ns2"),
                r.model_copy(update={"key": "other"}).request_hash(model="m", namespace="ns"),
                r.model_copy(update={"seed": 1}).request_hash(model="m", namespace="ns"),
                r.model_copy(update={"temperature": 0.0}).request_hash(model="m", namespace="ns"),
            }
        )
        == 6
    )


def test_unreachable_endpoint_and_missing_key(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(LLMCallError, match="APIConnectionError"):
        call_all(
            make_requests(1),
            endpoint(dead, max_retries=1),
            journal_url=str(tmp_path / "j"),
            namespace="u",
        )
    with pytest.raises(LLMCallError, match="SGPO_TEST_NO_SUCH_KEY is not set"):
        call_all(
            make_requests(1),
            endpoint("https://api.example.com/v1"),
            journal_url=str(tmp_path / "j2"),
            namespace="u",
        )


def test_local_journal_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    rec = CallRecord(request_hash="a" * 64, key="k", status="ok", text="t", attempts=1, model="m")
    path.write_text(
        rec.model_dump_json()
        + "\n"
        + rec.model_copy(update={"request_hash": "b" * 64}).model_dump_json()[:30]
    )
    j = LocalJournal(path)
    assert set(j.load()) == {"a" * 64}
    j.append(rec.model_copy(update={"request_hash": "c" * 64}))
    j.close()
    assert set(LocalJournal(path).load()) == {"a" * 64, "c" * 64}
