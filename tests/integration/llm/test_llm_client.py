"""The durable LLM client against a real HTTP server with a fake model: retries, faults, journals, kills."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import sgpo.llm.client.sync as sync_mod
from sgpo.llm.client import (
    CallRecord,
    ChatRequest,
    EndpointConfig,
    LLMCallError,
    LocalJournal,
    call_all,
)
from sgpo.llm.server import FaultConfig, read_request_log
from tests.helpers.llm import PoisonBackend, content, fake_text, make_requests, serve_fake

REPO = Path(__file__).resolve().parents[3]


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


def delivered_twice(entries: list[dict]) -> list[str]:
    """Request bodies for which the server delivered more than one completion."""
    counts = Counter(e["request_hash"] for e in entries if e["delivered"])
    return [h for h, n in counts.items() if n > 1]


def sent_after_ok(entries: list[dict]) -> list[str]:
    """Client requests sent again after a valid (unfaulted) completion had been delivered for them."""
    done: set[str] = set()
    bad = []
    for e in entries:
        cid = e["client_request_id"]
        if cid in done:
            bad.append(cid)
        if e["delivered"] and e["fault"] is None:
            done.add(cid)
    return bad


# --------------------------------------------------------------------------- basics


def test_call_all_returns_records_in_order(tmp_path, monkeypatch):
    log = tmp_path / "req.jsonl"
    reqs = make_requests(12, top_logprobs=2)
    seen = []
    with serve_fake(log) as url:
        ep = endpoint(url, price_per_1m_prompt_tokens=10.0, price_per_1m_completion_tokens=30.0)
        s = call_all(
            reqs,
            ep,
            journal_url=str(tmp_path / "j.jsonl"),
            namespace="t",
            progress=lambda done, total: seen.append((done, total)),
        )
    assert [r.key for r in s.records] == [r.key for r in reqs]
    assert [r.text for r in s.records] == [fake_text(r.messages, r.seed) for r in reqs]
    assert (s.n_ok, s.n_invalid, s.n_sent, s.n_from_journal, s.n_http_requests) == (
        12,
        0,
        12,
        0,
        12,
    )
    rec = s.records[0]
    assert rec.status == "ok" and rec.reason is None and rec.finish_reason == "stop"
    assert rec.model == "fake" and rec.attempts == 1
    assert json.loads(rec.raw_response)["object"] == "chat.completion"
    assert rec.top_logprobs[0]["top_logprobs"][0].keys() == {"token", "logprob"}
    assert len(rec.top_logprobs) == rec.completion_tokens
    assert s.prompt_tokens == sum(r.prompt_tokens for r in s.records) > 0
    assert s.cost_usd == pytest.approx((s.prompt_tokens * 10 + s.completion_tokens * 30) / 1e6)
    assert seen[-1] == (12, 12) and len(seen) == 12
    # the server saw our journal key as OpenAI's client request id header
    ids = {e["client_request_id"] for e in read_request_log(log)}
    assert ids == {r.request_hash(model="fake", namespace="t") for r in reqs}


def test_call_all_works_inside_a_running_event_loop(tmp_path):
    with serve_fake() as url:

        async def inside() -> int:
            return call_all(
                make_requests(3), endpoint(url), journal_url=str(tmp_path / "j"), namespace="t"
            ).n_ok

        assert asyncio.run(inside()) == 3


# --------------------------------------------------------------------------- faults


def test_faults_are_survived_without_paying_twice(tmp_path, monkeypatch):
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(d: float) -> None:
        delays.append(d)
        await real_sleep(min(d, 0.01))

    monkeypatch.setattr(sync_mod, "_sleep", recording_sleep)
    faults = FaultConfig(
        seed=5,
        rate_429=0.15,
        retry_after_s=0.5,
        rate_500=0.1,
        rate_timeout=0.1,
        timeout_sleep_s=5.0,
        rate_empty=0.15,
        rate_truncated=0.15,
        max_faults_per_request=2,
    )
    log = tmp_path / "req.jsonl"
    journal = tmp_path / "journal.jsonl"
    reqs = make_requests(40)
    # Client timeout 2 s: far above a normal answer even on a loaded machine (a normal answer
    # timed out would be delivered and paid twice, which is what this test must not see) and far
    # below the 5 s an injected timeout takes.
    with serve_fake(log, faults) as url:
        s = call_all(
            reqs,
            endpoint(url, timeout_s=2.0, max_invalid_retries=1),
            journal_url=str(journal),
            namespace="faults",
        )
    entries = read_request_log(log)
    faults_seen = Counter(e["fault"] for e in entries)
    assert {"429", "500", "timeout", "empty", "truncated"} <= set(faults_seen), faults_seen

    # Expected outcome per request, read off the server's log: the last completion delivered for it.
    last_delivered: dict[str, dict] = {}
    for e in entries:
        if e["delivered"]:
            last_delivered[e["client_request_id"]] = e
    expected_reason = {
        cid: {"empty": "empty", "truncated": "truncated", None: None}[e["fault"]]
        for cid, e in last_delivered.items()
    }
    assert len(expected_reason) == 40
    assert s.n_ok + s.n_invalid == 40
    assert s.n_invalid == sum(r is not None for r in expected_reason.values()) > 0
    assert s.n_ok > 0
    assert s.invalid_reasons == dict(Counter(r for r in expected_reason.values() if r))
    for rec in s.records:
        assert rec.reason == expected_reason[rec.request_hash]
        assert rec.status == ("ok" if rec.reason is None else "invalid")
    # A re-ask uses seed+1, so a valid answer is the fake model's answer for seed or seed+1.
    for req, rec in zip(reqs, s.records):
        if rec.status == "ok":
            assert rec.text in {fake_text(req.messages, req.seed + k) for k in (0, 1)}

    assert delivered_twice(entries) == []
    assert sent_after_ok(entries) == []
    # every finished request is journaled exactly once ("pending" lines carry the tokens of re-asked answers)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    journaled = [e["request_hash"] for e in lines if e["status"] != "pending"]
    assert {e["request_hash"] for e in lines if e["status"] == "pending"} <= set(journaled)
    assert sorted(journaled) == sorted(r.request_hash for r in s.records)
    # Retry-After is a floor for the delay after a 429 (0.5 s here, far above the 0.05 s backoff cap)
    assert sum(d >= 0.5 for d in delays) == faults_seen["429"]


def test_resume_sends_only_missing_requests(tmp_path):
    log = tmp_path / "req.jsonl"
    journal = str(tmp_path / "journal.jsonl")
    reqs = make_requests(20)
    with serve_fake(log) as url:
        first = call_all(reqs[:8], endpoint(url), journal_url=journal, namespace="r")
        n_log_first = len(read_request_log(log))
        second = call_all(reqs, endpoint(url), journal_url=journal, namespace="r")
    assert (first.n_sent, second.n_from_journal, second.n_sent) == (8, 8, 12)
    later_ids = {e["client_request_id"] for e in read_request_log(log)[n_log_first:]}
    assert later_ids == {r.request_hash(model="fake", namespace="r") for r in reqs[8:]}
    assert [content(r) for r in second.records[:8]] == [content(r) for r in first.records]
    # Everything journaled: no server needed at all, not even a URL.
    third = call_all(reqs, endpoint(None), journal_url=journal, namespace="r")
    assert (third.n_from_journal, third.n_sent, third.n_ok) == (20, 0, 20)
    assert [content(r) for r in third.records] == [content(r) for r in second.records]
    # another namespace is another call
    with serve_fake() as url:
        assert call_all(reqs[:2], endpoint(url), journal_url=journal, namespace="other").n_sent == 2


def test_validate_rejections_are_reasked_then_kept_invalid(tmp_path):
    log = tmp_path / "req.jsonl"
    reqs = make_requests(4)

    def validate(rec: CallRecord) -> str | None:
        return "unparseable" if rec.key == "row-2" else None

    with serve_fake(log) as url:
        s = call_all(
            reqs,
            endpoint(url, max_invalid_retries=2),
            journal_url=str(tmp_path / "j"),
            namespace="v",
            validate=validate,
        )
    bad = s.records[2]
    assert (bad.status, bad.reason, bad.attempts) == ("invalid", "unparseable", 3)
    assert bad.text == fake_text(
        reqs[2].messages, reqs[2].seed + 2
    )  # the last answer is kept for audit
    assert s.invalid_reasons == {"unparseable": 1} and s.n_ok == 3
    bodies = {
        e["request_hash"]
        for e in read_request_log(log)
        if e["client_request_id"] == bad.request_hash
    }
    assert len(bodies) == 3  # each re-ask is a different request (seed, seed+1, seed+2)


def test_truncation_is_invalid_unless_allowed(tmp_path):
    reqs = [r.model_copy(update={"max_tokens": 1, "top_logprobs": 2}) for r in make_requests(2)]
    with serve_fake() as url:
        strict = call_all(
            reqs,
            endpoint(url, max_invalid_retries=0),
            journal_url=str(tmp_path / "a"),
            namespace="t",
        )
        judge = call_all(
            reqs,
            endpoint(url),
            journal_url=str(tmp_path / "b"),
            namespace="t",
            allow_truncated=True,
        )
    assert strict.invalid_reasons == {"truncated": 2}
    assert judge.n_ok == 2 and all(
        r.finish_reason == "length" and len(r.top_logprobs) == 1 for r in judge.records
    )


def test_exhausted_retries_raise_a_clear_error_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SGPO_TEST_SECRET", "sk-test-very-secret-123456")
    faults = FaultConfig(rate_500=1.0, max_faults_per_request=100)
    journal = tmp_path / "j.jsonl"
    with serve_fake(faults=faults) as url:
        ep = endpoint(url, max_retries=2, api_key_env="SGPO_TEST_SECRET")
        with pytest.raises(LLMCallError) as err:
            call_all(make_requests(3), ep, journal_url=str(journal), namespace="e")
    msg = str(err.value)
    assert url in msg and "row-" in msg and "3 attempt(s)" in msg and "HTTP 500" in msg
    assert "very-secret" not in msg and "very-secret" not in repr(err.value.__dict__)
    assert err.value.key.startswith("row-") and err.value.endpoint == url
    assert (
        not journal.exists() or journal.read_text() == ""
    )  # nothing was answered, nothing journaled


def test_a_fatal_error_keeps_finished_answers_and_stops_sending(tmp_path):
    log = tmp_path / "req.jsonl"
    journal = str(tmp_path / "j.jsonl")
    reqs = make_requests(6)
    reqs[3] = reqs[3].model_copy(update={"messages": [{"role": "user", "content": "poison"}]})
    with serve_fake(log, backend=PoisonBackend()) as url:
        with pytest.raises(LLMCallError, match="'row-3'"):
            call_all(
                reqs,
                endpoint(url, max_concurrency=1, max_retries=1),
                journal_url=journal,
                namespace="p",
            )
    assert set(LocalJournal(journal).load()) == {
        r.request_hash(model="fake", namespace="p") for r in reqs[:3]
    }
    sent = {e["client_request_id"] for e in read_request_log(log)}
    assert (
        reqs[4].request_hash(model="fake", namespace="p") not in sent
    )  # not started after the failure


def test_a_non_retryable_status_is_fatal_not_journaled(tmp_path):
    journal = tmp_path / "j.jsonl"
    bad = ChatRequest(
        key="k", messages=[{"role": "user", "content": "x"}], temperature=5.0
    )  # server: 400
    with serve_fake() as url:
        with pytest.raises(LLMCallError, match="HTTP 400"):
            call_all([bad], endpoint(url), journal_url=str(journal), namespace="n")
    assert not journal.exists() or journal.read_text() == ""


# --------------------------------------------------------------------------- journals


def test_s3_journal(tmp_path, s3_endpoint):  # s3_endpoint: moto's S3 server, from conftest.py
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    url = "s3://sgpo-test/journal-test/annotate/calls"
    reqs = make_requests(6)
    log = tmp_path / "req.jsonl"
    with serve_fake(log) as base:
        first = call_all(
            reqs[:4], endpoint(base), journal_url=url, namespace="s3", storage_options=opts
        )
        second = call_all(
            reqs, endpoint(base), journal_url=url, namespace="s3", storage_options=opts
        )
    assert (second.n_from_journal, second.n_sent) == (4, 2)
    assert [content(r) for r in second.records[:4]] == [content(r) for r in first.records]
    assert len(read_request_log(log)) == 6
    objects = s3fs.S3FileSystem(skip_instance_cache=True, **opts).ls(url)
    assert sorted(Path(p).name for p in objects) == sorted(
        f"{r.request_hash}.json" for r in second.records
    )


# --------------------------------------------------------------------------- kill -9

KILL_SCRIPT = """
import json, sys
sys.path[:0] = [{repo!r}]
from tests.helpers.llm import make_requests
from sgpo.llm.client import EndpointConfig, call_all
ep = EndpointConfig(**json.loads(sys.argv[1]))
s = call_all(make_requests({n}), ep, journal_url=sys.argv[2], namespace="kill")
print(json.dumps({{"n_ok": s.n_ok}}))
"""


def test_kill_nine_then_resume_loses_and_repays_nothing(tmp_path):
    n, conc = 60, 4
    faults = FaultConfig(seed=11, rate_429=0.1, retry_after_s=0.01, rate_500=0.1, latency_s=0.05)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), n=n))
    journal = tmp_path / "journal.jsonl"
    log_a, log_b, log_ref = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "ref.jsonl"
    kill_after = random.Random(20240601).randint(5, 40)

    def journal_lines() -> int:
        try:
            return journal.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    with serve_fake(log_a, faults) as url:
        ep = endpoint(url, max_concurrency=conc).model_dump()
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(ep), str(journal)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while journal_lines() < kill_after and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert proc.poll() is None, (
            f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # let the server finish (and log) what was in flight at the kill
    assert proc.returncode == -signal.SIGKILL

    hashes = [r.request_hash(model="fake", namespace="kill") for r in make_requests(n)]
    journaled_at_kill = set(LocalJournal(journal).load())
    assert kill_after <= len(journaled_at_kill) < n

    with serve_fake(log_b, faults) as url:
        resumed = call_all(
            make_requests(n),
            endpoint(url, max_concurrency=conc),
            journal_url=str(journal),
            namespace="kill",
        )
    with serve_fake(log_ref, faults) as url:
        reference = call_all(
            make_requests(n),
            endpoint(url, max_concurrency=conc),
            journal_url=str(tmp_path / "ref.jsonl"),
            namespace="kill",
        )

    # 1. Nothing lost: the interrupted-and-resumed run equals an uninterrupted one.
    assert resumed.n_ok == n and resumed.n_from_journal == len(journaled_at_kill)
    assert [content(r) for r in resumed.records] == [content(r) for r in reference.records]
    # 2. Exactly the requests missing from the journal were sent again.
    a, b = read_request_log(log_a), read_request_log(log_b)
    assert {e["client_request_id"] for e in b} == set(hashes) - journaled_at_kill
    # 3. Paid twice: only answers delivered to the killed process and not yet journaled, which
    #    can happen (the server logs "delivered" as it sends; the client may die before its journal
    #    write). Those were in flight at the kill, so at most max_concurrency of them.
    delivered_a = {e["client_request_id"] for e in a if e["delivered"]}
    delivered_b = {e["client_request_id"] for e in b if e["delivered"]}
    repaid = delivered_a & delivered_b
    assert repaid <= set(hashes) - journaled_at_kill
    assert len(repaid) <= conc
    assert delivered_twice(a) == [] and delivered_twice(b) == []
