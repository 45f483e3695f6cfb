"""What the client sends and what it keeps: requests, the journaled record of each, the summary."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="The caller's stable row id, e.g. 'row-17/imp'")
    messages: list[dict[str, str]]
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int | None = None
    top_logprobs: int | None = Field(
        None, description="When set, ask logprobs=True, top_logprobs=N"
    )

    def request_hash(self, *, model: str, namespace: str) -> str:
        """The journal key: sha256 of everything that determines the answer, plus the row key."""
        payload = {
            "namespace": namespace,
            "model": model,
            "key": self.key,
            "messages": self.messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "top_logprobs": self.top_logprobs,
        }
        return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class CallRecord(BaseModel):
    """One finished request. `prompt_tokens`/`completion_tokens` are billed totals over every
    answer received for it (rejected re-asks included), so costs add up; `text` and
    `top_logprobs` are the kept (last) answer's.

    Status "pending" (journal only, never returned): `answers` invalid answers were paid for and
    a re-ask is due. It keeps their tokens in the journal when the run dies or fails before the
    re-ask finishes, and a re-run continues with re-ask number `answers` instead of starting over."""

    request_hash: str
    key: str
    status: Literal["ok", "invalid", "pending"]
    reason: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    top_logprobs: list[dict] | None = (
        None  # per generated token: {"token", "logprob", "top_logprobs": [{"token","logprob"}]}
    )
    attempts: int = 0  # HTTP requests sent for this record, retries and re-asks included
    answers: int = 0  # answers received and billed (the kept one and the rejected re-asks)
    batch: bool = False  # answered through the Batch API (billed at the batch discount)
    model: str = ""  # the model that answered, as the response names it
    raw_response: str | None = None  # the last response's JSON body, for audit


class CallSummary(BaseModel):
    """Totals are over all distinct `records` (journaled ones included): the cost of the whole set.
    A request listed twice is sent, and paid, once, so its tokens count once."""

    records: list[CallRecord]  # in the order of the requests
    n_ok: int
    n_invalid: int
    n_from_journal: int  # requests answered from the journal: not sent, not paid again
    n_sent: int  # requests sent in this call
    n_http_requests: int = 0  # HTTP attempts made in this call (retries and re-asks included)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    invalid_reasons: dict[str, int]
