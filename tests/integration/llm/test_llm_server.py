"""The local OpenAI-compatible server, driven by the official `openai` client against a tiny model."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sgpo.llm.server import (
    FaultConfig,
    TransformersChatBackend,
    build_app,
    read_request_log,
    running_server,
)
from tests.helpers.llm import EchoBackend

REPO = Path(__file__).resolve().parents[3]
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Which is the capital of France?"},
]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):  # tiny_model_dir: the session fixture in conftest.py
    log = tmp_path_factory.mktemp("log") / "requests.jsonl"
    app = build_app(
        TransformersChatBackend(tiny_model_dir), model_name="tiny-test", request_log=log
    )
    with running_server(app) as url:
        yield url, log


@pytest.fixture(scope="module")
def client(served):
    import openai

    return openai.OpenAI(base_url=served[0], api_key="EMPTY", max_retries=0)


def test_chat_completion_parses(client, served):
    resp = client.chat.completions.create(
        model="tiny-test", messages=MESSAGES, max_tokens=12, temperature=0.7, seed=1
    )
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "tiny-test"
    (choice,) = resp.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    u = resp.usage
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    # the log names the request, says it got an answer, and never stores the body
    last = read_request_log(served[1])[-1]
    assert last["status"] == 200 and last["delivered"] is True and last["fault"] is None
    assert len(last["request_hash"]) == 64 and "messages" not in last


def test_max_completion_tokens_and_models(client):
    resp = client.chat.completions.create(
        model="tiny-test", messages=MESSAGES, max_completion_tokens=3, temperature=0
    )
    assert resp.usage.completion_tokens <= 3
    assert [m.id for m in client.models.list().data] == ["tiny-test"]


def test_logprobs_are_valid_log_probabilities(client):
    resp = client.chat.completions.create(
        model="tiny-test",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert content and len(content) <= resp.usage.completion_tokens
    for tok in content:
        assert tok.logprob <= 0 and math.isfinite(tok.logprob)
        tops = tok.top_logprobs
        assert len(tops) == 5
        lps = [t.logprob for t in tops]
        assert lps == sorted(lps, reverse=True)
        assert all(lp <= 0 for lp in lps)
        assert sum(math.exp(lp) for lp in lps) <= 1 + 1e-4
        # five different tokens (by their exact bytes: two partial UTF-8 pieces may both print as U+FFFD)
        assert all(t.bytes is not None for t in tops)
        assert len({bytes(t.bytes) for t in tops}) == 5
        # greedy: the chosen token is the most likely one under the raw distribution
        assert tok.token == tops[0].token
        assert tok.logprob == pytest.approx(tops[0].logprob, abs=1e-5)
    # exact token bytes add up to the text (when no special token was generated: those are not text)
    if not any("<|" in t.token for t in content) and choice.finish_reason == "length":
        assert (
            b"".join(bytes(t.bytes) for t in content).decode("utf-8", errors="replace")
            == choice.message.content
        )


def test_seeded_sampling_is_reproducible(client):
    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model="tiny-test",
            messages=MESSAGES,
            max_tokens=16,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
        )
        return r.choices[0].message.content

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c  # a fixed model and fixed seeds: this is a fixed fact, not a probability


def test_n_greater_than_one_is_rejected(client, served):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-test", messages=MESSAGES, n=2)
    assert err.value.status_code == 400
    assert "n=2" in err.value.message
    assert read_request_log(served[1])[-1]["status"] == 400


def test_stop_sequences_cut_the_text(client):
    def greedy(**kw):
        r = client.chat.completions.create(
            model="tiny-test", messages=MESSAGES, max_tokens=12, temperature=0, **kw
        )
        return r.choices[0]

    full = greedy().message.content
    assert len(full) >= 4
    stop = full[2:4]
    cut = greedy(stop=[stop], logprobs=True, top_logprobs=1)
    assert cut.message.content == full[: full.find(stop)]
    assert cut.finish_reason == "stop"
    assert len(cut.logprobs.content) <= len(full)


def test_injected_429_carries_retry_after(tmp_path):
    log = tmp_path / "req.jsonl"
    app = build_app(
        EchoBackend(),
        model_name="fake",
        request_log=log,
        faults=FaultConfig(rate_429=1.0, retry_after_s=7, max_faults_per_request=1),
    )
    with running_server(app) as url:
        body = json.dumps(
            {"model": "fake", "messages": [{"role": "user", "content": "x"}]}
        ).encode()
        post = lambda: urllib.request.urlopen(  # noqa: E731
            urllib.request.Request(
                f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
            )
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            post()
        assert err.value.code == 429 and err.value.headers["Retry-After"] == "7"
        with post() as r:  # max_faults_per_request=1: the second attempt is answered
            assert json.load(r)["choices"][0]["message"]["content"].startswith("answer to <x>")
    entries = read_request_log(log)
    assert [(e["status"], e["fault"], e["delivered"], e["attempt"]) for e in entries] == [
        (429, "429", False, 0),
        (200, None, True, 1),
    ]
    assert entries[0]["request_hash"] == entries[1]["request_hash"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_help_is_cheap():
    # the module imports no torch/fastapi at import time, so --help answers at once
    out = subprocess.run(
        [sys.executable, "-m", "sgpo.llm.server", "--help"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--served-model-name" in out and "--fault-config" in out


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~10 s, more on a loaded machine
def test_cli_entry_point(tiny_model_dir, tmp_path):
    port = _free_port()
    log = tmp_path / "cli.jsonl"
    faults = json.dumps({"seed": 1, "latency_s": 0.0})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sgpo.llm.server",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--served-model-name",
            "cli-tiny",
            "--fault-config",
            faults,
            "--request-log",
            str(log),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        import openai

        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", max_retries=0)
        r = c.chat.completions.create(
            model="cli-tiny", messages=MESSAGES, max_tokens=4, temperature=0
        )
        assert r.model == "cli-tiny" and r.usage.completion_tokens <= 4
        assert read_request_log(log)[-1]["delivered"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=20)
