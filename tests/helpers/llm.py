"""Shared helpers for the LLM server/client tests: a tiny local model and a cheap fake backend."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

from sgpo.llm.server import ChatResult


def fake_text(messages: list[dict], seed: int | None) -> str:
    """The fake backend's answer: a pure function of the last message and the seed."""
    digest = hashlib.sha256(f"{messages[-1]['content']}|{seed}".encode()).hexdigest()[:12]
    return f"answer to <{messages[-1]['content']}> #{digest}"


class EchoBackend:
    """A deterministic stand-in for a model, so client tests exercise HTTP, faults and journals, not torch."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def chat(
        self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop
    ) -> ChatResult:
        with self._lock:
            self.calls += 1
        text = fake_text(messages, seed)
        words = text.split(" ")
        finish = "stop"
        if len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
            text = " ".join(words)
        logprobs = None
        if top_logprobs is not None:
            logprobs = [
                {
                    "token": w,
                    "logprob": -0.5,
                    "top_logprobs": [
                        {"token": w, "logprob": -0.5},
                        {"token": "x", "logprob": -1.5},
                    ][:top_logprobs],
                }
                for w in words
            ]
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return ChatResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words),
            logprobs=logprobs,
        )


class PoisonBackend(EchoBackend):
    """Echo, except that a message containing 'poison' makes the backend fail (the server answers 500)."""

    def chat(self, messages, **kw) -> ChatResult:
        if "poison" in messages[-1]["content"]:
            raise RuntimeError("poisoned request")
        return super().chat(messages, **kw)


def make_requests(n: int, *, prefix: str = "q", top_logprobs: int | None = None):
    from sgpo.llm.client import ChatRequest

    return [
        ChatRequest(
            key=f"row-{i}",
            messages=[{"role": "user", "content": f"{prefix} {i}"}],
            seed=100 + i,
            max_tokens=64,
            top_logprobs=top_logprobs,
        )
        for i in range(n)
    ]


@contextlib.contextmanager
def serve_fake(log_path: str | Path | None = None, faults=None, backend=None) -> Iterator[str]:
    """A real HTTP server (uvicorn, OpenAI wire format) around a fake backend; yields the base URL."""
    from sgpo.llm.server import build_app, running_server

    app = build_app(
        backend or EchoBackend(), model_name="fake", faults=faults, request_log=log_path
    )
    with running_server(app) as url:
        yield url


def content(record) -> dict:
    """A record minus what legitimately differs between equivalent runs (attempt counts, response ids)."""
    return record.model_dump(exclude={"attempts", "raw_response"})
