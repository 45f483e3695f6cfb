"""Every paid answer counts in the journal's token totals: empty and invalid ones that get re-asked,
ones followed by a rejection, and ones whose request failed (or was killed) before its re-ask finished."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading

import pytest

from sgpo.llm.client import EndpointConfig, LLMCallError, LocalJournal, call_all
from sgpo.llm.server import ChatResult, FaultConfig, read_request_log
from tests.helpers.llm import EchoBackend, make_requests, serve_fake


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
            ),
            **kw,
        }
    )


def billed(entries) -> tuple[int, int]:
    """What the server billed: the usage of every completion it delivered."""
    got = [e for e in entries if e["delivered"]]
    return sum(e["prompt_tokens"] for e in got), sum(e["completion_tokens"] for e in got)


def journal_totals(path) -> tuple[int, int]:
    recs = LocalJournal(path).load_all().values()
    return sum(r.prompt_tokens for r in recs), sum(r.completion_tokens for r in recs)


def test_empty_and_truncated_answers_count_in_the_totals(tmp_path):
    log, journal = tmp_path / "req.jsonl", tmp_path / "j.jsonl"
    faults = FaultConfig(seed=3, rate_empty=0.45, rate_truncated=0.15, max_faults_per_request=4)
    with serve_fake(log, faults) as url:
        reqs = make_requests(30) + make_requests(3)  # the last three repeat: sent and paid once
        s = call_all(
            reqs, endpoint(url, max_invalid_retries=2), journal_url=str(journal), namespace="tok"
        )
    entries = read_request_log(log)
    empties = [e for e in entries if e["fault"] == "empty"]
    assert empties and all(
        e["completion_tokens"] > 0 for e in empties
    )  # an empty answer is still billed
    assert s.n_invalid > 0 and s.n_ok > 0
    assert (s.prompt_tokens, s.completion_tokens) == billed(entries)
    assert journal_totals(journal) == billed(entries)


class EmptyThenBroken(EchoBackend):
    """Answers '' to the first ask (seed s) of the poisoned request and fails (HTTP 500) on its re-ask."""

    def chat(self, messages, *, seed, **kw) -> ChatResult:
        if "poison" in messages[-1]["content"]:
            if seed == 7:
                return ChatResult(
                    text="", finish_reason="stop", prompt_tokens=11, completion_tokens=5
                )
            raise RuntimeError("down")
        return super().chat(messages, seed=seed, **kw)


def test_paid_answers_before_a_failure_stay_in_the_journal_and_are_not_paid_again(tmp_path):
    journal = tmp_path / "j.jsonl"
    req = make_requests(1)[0].model_copy(
        update={"messages": [{"role": "user", "content": "poison"}], "seed": 7}
    )
    log_a, log_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with serve_fake(log_a, backend=EmptyThenBroken()) as url:
        with pytest.raises(LLMCallError, match="HTTP 500"):
            call_all([req], endpoint(url, max_retries=1), journal_url=str(journal), namespace="p")
    assert billed(read_request_log(log_a)) == (11, 5)
    assert journal_totals(journal) == (
        11,
        5,
    )  # the empty answer's tokens were journaled before the failure
    assert LocalJournal(journal).load() == {}  # ... but the request is not finished
    with serve_fake(log_b) as url:  # the provider recovered
        s = call_all([req], endpoint(url), journal_url=str(journal), namespace="p")
    rec = s.records[0]
    b = read_request_log(log_b)
    assert len(b) == 1 and json.loads(rec.raw_response)  # only the re-ask was sent ...
    assert (
        rec.text
        == EchoBackend()
        .chat(
            req.messages,
            max_tokens=64,
            temperature=0.7,
            top_p=0.9,
            seed=8,
            top_logprobs=None,
            stop=None,
        )
        .text
    )  # ... with seed + 1
    assert (rec.status, rec.answers, rec.attempts) == (
        "ok",
        2,
        2,
    )  # attempts: the journaled ones (1) + this run's
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        11 + b[0]["prompt_tokens"],
        5 + b[0]["completion_tokens"],
    )
    assert (s.prompt_tokens, s.completion_tokens) == (rec.prompt_tokens, rec.completion_tokens)


@contextlib.contextmanager
def scripted_server(responses: list[tuple[int, dict]]):
    """A real HTTP server answering POSTs with the given (status, JSON body) in turn."""
    queue = list(responses)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status, body = queue.pop(0)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_rejection_after_an_empty_answer_keeps_its_tokens(tmp_path):
    empty = {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 13, "completion_tokens": 4, "total_tokens": 17},
    }
    rejected = {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": None,
            "code": "context_length_exceeded",
        }
    }
    with scripted_server([(200, empty), (400, rejected)]) as url:
        s = call_all(
            make_requests(1),
            endpoint(url, max_invalid_retries=2),
            journal_url=str(tmp_path / "j"),
            namespace="r",
        )
    rec = s.records[0]
    assert (rec.status, rec.reason) == ("invalid", "rejected:context_length_exceeded")
    assert (rec.prompt_tokens, rec.completion_tokens, s.prompt_tokens, s.completion_tokens) == (
        13,
        4,
        13,
        4,
    )
