"""A request whose client gave up is not generated (issue 20).

The stand-in generates one request at a time while the client sends `max_concurrency` at once,
each with a timeout. Requests the client timed out on used to stay queued and be generated
anyway, so every retry waited behind them and a slow model never caught up. A slow fake backend
shows it without a model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sgpo.llm.embedded import stand_in_app
from sgpo.llm.server import ChatResult, build_app, read_request_log, running_server

GENERATION_S = 1.0  # one answer of the slow backend
N_ABANDONED = 6  # requests sent at once whose clients give up before their turn


class SlowBackend:
    """One answer at a time (like a local model), `seconds` each; records what it generated."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.generated: list[str] = []
        self._lock = threading.Lock()

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        with self._lock:
            time.sleep(self.seconds)
            self.generated.append(messages[-1]["content"])
        return ChatResult("done", "stop", prompt_tokens=1, completion_tokens=1)


def ask(url: str, content: str, timeout_s: float) -> str:
    import openai

    client = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=timeout_s)
    try:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], max_tokens=4
        )
        return reply.choices[0].message.content
    finally:
        client.close()


def abandon(url: str, n: int, timeout_s: float = 0.4) -> None:
    """n requests at once, each given up by its client after `timeout_s`."""
    import openai

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(ask, url, f"abandoned-{i}", timeout_s) for i in range(n)]
        for f in futures:
            with pytest.raises(openai.APITimeoutError):
                f.result()


def test_the_stand_in_does_not_generate_what_its_client_gave_up_on():
    backend = SlowBackend(GENERATION_S)
    with running_server(stand_in_app(backend, max_new_tokens_cap=16)) as url:
        abandon(url, N_ABANDONED)
        # The retry waits only for the one abandoned request already being generated (that one
        # runs to its end), not for the others: about 2 generations, where queueing behind
        # every abandoned request takes N_ABANDONED + 1 of them.
        t0 = time.monotonic()
        assert ask(url, "retry", timeout_s=4 * GENERATION_S) == "done"
        waited = time.monotonic() - t0
        time.sleep(GENERATION_S + 0.5)  # room for anything still queued to show up
    assert waited < 4 * GENERATION_S
    assert len(backend.generated) == 2, backend.generated
    assert backend.generated[0].startswith("abandoned-") and backend.generated[1] == "retry"


def test_dropped_requests_are_logged_and_patient_clients_still_served(tmp_path):
    backend = SlowBackend(0.5)
    log = tmp_path / "requests.jsonl"
    app = build_app(backend, model_name="m", request_log=log, max_parallel=1)
    with running_server(app) as url:
        with ThreadPoolExecutor(2) as pool:
            patient = [pool.submit(ask, url, f"patient-{i}", 30.0) for i in range(2)]
            abandon(url, 3, timeout_s=0.2)
            assert [f.result() for f in patient] == ["done", "done"]
    entries = read_request_log(log)
    dropped = [e for e in entries if e.get("dropped")]
    delivered = [e for e in entries if e["delivered"]]
    assert len(entries) == 5
    # at 0.2 s at most one request holds the turn: the other abandoned ones are still waiting
    assert len(dropped) >= 2
    assert all(e["status"] == 499 and not e["delivered"] for e in dropped)
    # every request was either generated and delivered or dropped without being generated
    assert len(delivered) + len(dropped) == 5 and len(backend.generated) == len(delivered)
    assert {f"patient-{i}" for i in range(2)} <= set(backend.generated)
