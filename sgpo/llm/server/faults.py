"""Fault injection, for tests: which failures to inject (`FaultConfig`, decided deterministically per
request attempt) and how an attempt meets them (`injected_failure` before generation, `spoil`
after). The app consults them only when it is built with `faults=`."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sgpo.llm.server.wire import Reply, error_reply

FaultKind = Literal["429", "500", "timeout", "empty", "truncated"]


class FaultConfig(BaseModel):
    """Which failures to inject, at which rates (each a probability per request attempt).

    The fault for an attempt is a pure function of (seed, request hash, attempt number), where
    the attempt number counts earlier requests with the same body seen by this server; so the
    same client behaviour meets the same faults on every run. After `max_faults_per_request`
    faulted attempts of one body, it is answered normally: every request eventually succeeds.

    Timeouts: the server sleeps `timeout_sleep_s`, then answers 504 (if the client is still
    there). No completion is delivered, so a timeout never makes the client pay twice for one
    answer; a real provider may bill a request the client gave up on, which no client can avoid.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    rate_429: float = Field(0.0, ge=0, le=1)
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After sent with a 429")
    rate_500: float = Field(0.0, ge=0, le=1)
    rate_timeout: float = Field(0.0, ge=0, le=1)
    timeout_sleep_s: float = Field(5.0, ge=0, description="How long a 'timeout' answer takes")
    rate_empty: float = Field(0.0, ge=0, le=1, description="Answer with content ''")
    rate_truncated: float = Field(
        0.0, ge=0, le=1, description="Cut the text, finish_reason 'length'"
    )
    latency_s: float = Field(0.0, ge=0, description="Added to every request")
    max_faults_per_request: int = Field(3, ge=0)
    # Batch API: items meet the faults above (429/500/timeout fail the item), plus:
    batch_latency_s: float = Field(
        0.0, ge=0, description="A batch stays in progress at least this long (slow batch)"
    )
    expire_batches: int = Field(0, ge=0, description="The first N batches created expire ...")
    expire_after_items: int = Field(
        0, ge=0, description="... after answering this many of their items"
    )

    @model_validator(mode="after")
    def _rates_sum_to_at_most_one(self) -> FaultConfig:
        if self._total_rate() > 1 + 1e-9:
            raise ValueError("the fault rates add up to more than 1")
        return self

    def _total_rate(self) -> float:
        return (
            self.rate_429
            + self.rate_500
            + self.rate_timeout
            + self.rate_empty
            + self.rate_truncated
        )

    def decide(self, request_hash: str, attempt: int) -> FaultKind | None:
        if attempt >= self.max_faults_per_request:
            return None
        digest = hashlib.sha256(f"{self.seed}:{request_hash}:{attempt}".encode()).digest()
        u = random.Random(digest).random()
        edge = 0.0
        for kind, rate in (
            ("429", self.rate_429),
            ("500", self.rate_500),
            ("timeout", self.rate_timeout),
            ("empty", self.rate_empty),
            ("truncated", self.rate_truncated),
        ):
            edge += rate
            if u < edge:
                return kind  # type: ignore[return-value]
        return None


async def injected_failure(
    faults: FaultConfig, fault: FaultKind | None, *, in_batch: bool, record: Callable[[int], None]
) -> Reply | None:
    """The reply an attempt gets instead of an answer (None: it is answered); `record(status)` logs it.

    In a batch an injected 429/500/timeout fails the item at once: the batch reports it in its
    error file, and there is no client connection to time out."""
    if faults.latency_s and not in_batch:
        await asyncio.sleep(faults.latency_s)
    if in_batch and fault == "timeout":
        record(500)
        return error_reply(500, "The request timed out (injected)", "server_error")
    if fault == "429":
        record(429)
        headers = {
            "Retry-After": f"{faults.retry_after_s:g}",
            "retry-after-ms": str(int(faults.retry_after_s * 1000)),
        }
        return error_reply(
            429, "Rate limit reached (injected)", "requests", "rate_limit_exceeded", headers
        )
    if fault == "500":
        record(500)
        return error_reply(500, "The server had an error (injected)", "server_error")
    if fault == "timeout":
        # logged up front: the client usually hangs up first, and a server shutting down
        # cancels the sleep, yet the log must still show this attempt
        record(504)
        await asyncio.sleep(faults.timeout_sleep_s)
        return error_reply(504, "Upstream timed out (injected)", "server_error")
    return None


def spoil(
    fault: FaultKind | None,
    text: str,
    finish: str,
    completion_tokens: int,
    logprobs: list[dict[str, Any]] | None,
) -> tuple[str, str, int, list[dict[str, Any]] | None]:
    """An answer as an "empty" or "truncated" fault delivers it: (text, finish, tokens, logprobs)."""
    if fault == "empty":
        # what was generated is billed although nothing usable came back (as providers do)
        return "", finish, completion_tokens, ([] if logprobs is not None else None)
    if fault == "truncated":
        if logprobs is not None:
            logprobs = logprobs[: len(logprobs) // 2]
        return text[: len(text) // 2], "length", max(1, completion_tokens // 2), logprobs
    return text, finish, completion_tokens, logprobs
