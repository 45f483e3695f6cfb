"""Fault injection for tests: which failures to inject, decided deterministically per request."""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
