"""What the server serves: one answer (`ChatResult`) from anything that implements `ChatBackend`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass
class ChatResult:
    """One generated answer.

    `logprobs`, when asked for, has one entry per generated token (the end-of-sequence token
    excluded, as OpenAI does): `{"token": str, "logprob": float, "top_logprobs": [{"token",
    "logprob"}...]}`; an entry may also carry `"bytes": list[int]` (the token's exact bytes,
    which differ from `token.encode()` when a token splits a multi-byte character).
    `completion_tokens` counts every generated token, the end-of-sequence one included, since
    that is what a provider bills.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None


class BackendClosed(RuntimeError):
    """The backend was closed (the server is shutting down): the request is not answered."""


class ChatBackend(Protocol):
    """Anything that turns chat messages into one answer. Called from worker threads."""

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        top_logprobs: int | None,
        stop: list[str] | None,
    ) -> ChatResult: ...
