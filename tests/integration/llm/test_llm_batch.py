"""Batch API mode of the durable client against the local server's Batch API (files + batches)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sgpo.llm.client import EndpointConfig, LLMCallError, LocalJournal, call_all
from sgpo.llm.server import FaultConfig, read_request_log
from tests.helpers.llm import content, fake_text, make_requests, serve_fake

REPO = Path(__file__).resolve().parents[3]


def endpoint(url, **kw) -> EndpointConfig:
    return EndpointConfig(
        **{
            **dict(
                base_url=url,
                model="fake",
                api_key_env="SGPO_TEST_NO_SUCH_KEY",
                backoff_base_s=0.01,
                backoff_max_s=0.02,
                timeout_s=10,
                batch_poll_s=0.02,
                batch_poll_max_s=0.1,
                price_per_1m_prompt_tokens=10.0,
                price_per_1m_completion_tokens=30.0,
            ),
            **kw,
        }
    )


def same(record) -> dict:
    return {k: v for k, v in content(record).items() if k != "batch"}


def batch_creates(entries) -> list[str]:
    return [e["batch_id"] for e in entries if e.get("event") == "batch_create"]


def delivered_per_request(entries) -> Counter:
    return Counter(e["client_request_id"] for e in entries if e["delivered"])


def test_batch_mode_gives_the_records_of_sync_mode_at_half_price(tmp_path):
    faults = FaultConfig(seed=4, rate_empty=0.2, rate_truncated=0.1, max_faults_per_request=1)
    reqs = make_requests(10, top_logprobs=2) + make_requests(
        2, top_logprobs=2
    )  # two repeats: asked once
    with serve_fake(tmp_path / "sync.jsonl", faults) as url:
        sync = call_all(
            reqs, endpoint(url), journal_url=str(tmp_path / "sync-j.jsonl"), namespace="b"
        )
    seen = []
    with serve_fake(tmp_path / "batch.jsonl", faults) as url:
        batch = call_all(
            reqs,
            endpoint(url, mode="batch"),
            journal_url=str(tmp_path / "batch-j.jsonl"),
            namespace="b",
            progress=lambda d, t: seen.append((d, t)),
        )
    assert (
        sync.n_invalid + sync.n_ok == 12 and sync.invalid_reasons
    )  # the faults did hit, and re-asks happened
    assert [same(r) for r in batch.records] == [same(r) for r in sync.records]
    assert all(r.batch for r in batch.records) and not any(r.batch for r in sync.records)
    for req, rec in zip(
        reqs, batch.records
    ):  # the kept answer is that of the last re-ask (seed + answers - 1)
        assert rec.status == "invalid" or rec.text == fake_text(
            req.messages, req.seed + rec.answers - 1
        )
    assert (batch.n_ok, batch.n_invalid, batch.invalid_reasons) == (
        sync.n_ok,
        sync.n_invalid,
        sync.invalid_reasons,
    )
    assert (batch.prompt_tokens, batch.completion_tokens) == (
        sync.prompt_tokens,
        sync.completion_tokens,
    )
    assert batch.cost_usd == pytest.approx(sync.cost_usd * 0.5)
    entries = read_request_log(tmp_path / "batch.jsonl")
    # one batch per round of re-asks: as many batches as the most answers any request needed in sync mode
    assert len(batch_creates(entries)) == max(r.answers for r in sync.records) > 1
    assert all(e.get("batch_id") for e in entries)  # nothing went through the sync endpoint
    assert seen[-1] == (12, 12)
    # everything journaled: a re-run in either mode sends nothing
    with serve_fake(tmp_path / "again.jsonl") as url:
        for mode in ("sync", "batch"):
            again = call_all(
                reqs,
                endpoint(url, mode=mode),
                journal_url=str(tmp_path / "batch-j.jsonl"),
                namespace="b",
            )
            assert again.n_sent == 0 and [same(r) for r in again.records] == [
                same(r) for r in sync.records
            ]
    assert read_request_log(tmp_path / "again.jsonl") == []


def test_an_expired_batch_is_resubmitted_without_repaying_its_answers(tmp_path):
    faults = FaultConfig(expire_batches=1, expire_after_items=3)
    reqs = make_requests(8)
    log = tmp_path / "req.jsonl"
    with serve_fake(log, faults) as url:
        s = call_all(
            reqs, endpoint(url, mode="batch"), journal_url=str(tmp_path / "j.jsonl"), namespace="e"
        )
    entries = read_request_log(log)
    assert s.n_ok == 8 and [r.text for r in s.records] == [
        fake_text(r.messages, r.seed) for r in reqs
    ]
    assert len(batch_creates(entries)) == 2
    assert (
        set(delivered_per_request(entries).values()) == {1}
        and len(delivered_per_request(entries)) == 8
    )
    # the second batch held exactly the five the first one did not answer
    second = batch_creates(entries)[1]
    assert (
        len(
            {
                e["client_request_id"]
                for e in entries
                if e.get("batch_id") == second and e["delivered"]
            }
        )
        == 5
    )
    assert sorted(r.attempts for r in s.records) == [1] * 3 + [2] * 5


def test_partly_failed_batches_are_retried_then_named(tmp_path):
    reqs = make_requests(12)
    log = tmp_path / "req.jsonl"
    with serve_fake(
        log, FaultConfig(seed=2, rate_500=0.4, rate_429=0.1, max_faults_per_request=1)
    ) as url:
        s = call_all(
            reqs, endpoint(url, mode="batch"), journal_url=str(tmp_path / "j.jsonl"), namespace="f"
        )
    entries = read_request_log(log)
    failed = {e["client_request_id"] for e in entries if e["fault"] in ("500", "429")}
    assert failed and s.n_ok == 12 and len(batch_creates(entries)) == 2
    assert set(delivered_per_request(entries).values()) == {1}

    log2 = tmp_path / "req2.jsonl"
    with serve_fake(log2, FaultConfig(rate_500=1.0, max_faults_per_request=100)) as url:
        with pytest.raises(LLMCallError) as e:
            call_all(
                reqs[:3],
                endpoint(url, mode="batch", max_retries=1),
                journal_url=str(tmp_path / "j2.jsonl"),
                namespace="f",
            )
    msg = str(e.value)
    assert msg.startswith(
        f"3 request(s) got no answer in 2 batch submission(s) to {url}: 'row-0' (HTTP 500)"
    )
    assert "'row-1'" in msg and "'row-2'" in msg
    assert len(batch_creates(read_request_log(log2))) == 2
    assert LocalJournal(tmp_path / "j2.jsonl").load() == {}


KILL_SCRIPT = """
import json, sys
sys.path[:0] = [{repo!r}]
from tests.helpers.llm import make_requests
from sgpo.llm.client import EndpointConfig, call_all
ep = EndpointConfig(**json.loads(sys.argv[1]))
s = call_all(make_requests({n}), ep, journal_url=sys.argv[2], namespace="kill")
print(json.dumps({{"n_ok": s.n_ok}}))
"""


def test_kill_nine_during_a_batch_then_resume_repays_nothing(tmp_path):
    n = 20
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), n=n))
    journal = tmp_path / "journal.jsonl"
    batches = Path(f"{journal}.batches.jsonl")
    log = tmp_path / "req.jsonl"
    with serve_fake(
        log, FaultConfig(batch_latency_s=2.0)
    ) as url:  # a slow batch: the kill lands while it runs
        ep = endpoint(url, mode="batch")
        proc = subprocess.Popen(
            [sys.executable, str(script), ep.model_dump_json(), str(journal)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while (
            b'"submitted"' not in (batches.read_bytes() if batches.exists() else b"")
            and proc.poll() is None
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert LocalJournal(journal).load() == {}  # killed before any result came back
        resumed = call_all(make_requests(n), ep, journal_url=str(journal), namespace="kill")
    entries = read_request_log(log)
    assert resumed.n_ok == n and resumed.n_from_journal == 0
    assert [r.text for r in resumed.records] == [
        fake_text(r.messages, r.seed) for r in make_requests(n)
    ]
    assert (
        len(batch_creates(entries)) == 1
    )  # the re-run polled the killed run's batch: no second one
    assert delivered_per_request(entries) == Counter({r.request_hash: 1 for r in resumed.records})


def test_a_kill_between_upload_and_journaling_the_batch_id_finds_the_batch(tmp_path):
    """The batch record is journaled at upload; if the run died before the batch id was journaled,
    the re-run finds the batch by its input file id instead of creating (and paying) another."""
    import openai

    from sgpo.llm.client import BatchRecord, open_batch_journal

    journal = tmp_path / "journal.jsonl"
    log = tmp_path / "req.jsonl"
    reqs = make_requests(4)
    with serve_fake(log) as url:
        ep = endpoint(url, mode="batch")
        # what a killed run leaves: the input uploaded, the batch created, only the upload journaled
        hashes = [r.request_hash(model="fake", namespace="k") for r in reqs]
        lines = "".join(
            json.dumps(
                {
                    "custom_id": h,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "fake",
                        "messages": r.messages,
                        "temperature": r.temperature,
                        "top_p": r.top_p,
                        "max_tokens": r.max_tokens,
                        "seed": r.seed,
                    },
                }
            )
            + "\n"
            for h, r in zip(hashes, reqs)
        )
        client = openai.OpenAI(base_url=url, api_key="EMPTY")
        f = client.files.create(
            file=("x.jsonl", lines.encode(), "application/jsonl"), purpose="batch"
        )
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        bj = open_batch_journal(str(journal))
        bj.append(
            BatchRecord(
                batch_key="k1",
                input_file_id=f.id,
                items={h: 0 for h in hashes},
                state="uploaded",
                created_at=0.0,
            )
        )
        bj.close()
        s = call_all(reqs, ep, journal_url=str(journal), namespace="k")
    entries = read_request_log(log)
    assert s.n_ok == 4 and len(batch_creates(entries)) == 1
    assert set(delivered_per_request(entries).values()) == {1}


def test_batch_mode_with_an_s3_journal(tmp_path, s3_endpoint):
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    url = "s3://sgpo-test/batch-journal/annotate/calls"
    reqs = make_requests(5)
    with serve_fake(tmp_path / "req.jsonl") as base:
        first = call_all(
            reqs[:3],
            endpoint(base, mode="batch"),
            journal_url=url,
            namespace="s3",
            storage_options=opts,
        )
        second = call_all(
            reqs,
            endpoint(base, mode="batch"),
            journal_url=url,
            namespace="s3",
            storage_options=opts,
        )
    assert (first.n_ok, second.n_from_journal, second.n_sent, second.n_ok) == (3, 3, 2, 5)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    assert sorted(Path(p).name for p in fs.ls(url)) == sorted(
        f"{r.request_hash}.json" for r in second.records
    )
    assert len(fs.ls(url + ".batches")) == 2  # one record per submission, beside the call records
