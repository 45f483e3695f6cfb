"""Classifying provider failures (retry, give up, or keep the row as rejected) and the backoff
between retries. Sync and batch mode classify the same way."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

from sgpo.config import EndpointConfig

# A far-away quota reset should fail the run visibly instead of stalling it.
MAX_RETRY_AFTER_S = 600.0

# 400s that are a property of one request, not of the configuration: re-sending it cannot help,
# failing the whole batch for one over-long or flagged prompt would be worse, so the row is kept
# as invalid with this reason. Every other 4xx (auth, unknown model, bad parameter) is fatal.
PER_REQUEST_400_CODES = {
    "context_length_exceeded",
    "content_filter",
    "invalid_prompt",
    "content_policy_violation",
}

# The 4xx that mean "not now" rather than "never": timeout, conflict, rate limit.
RETRIABLE_4XX = (408, 409, 429)


def is_per_request_rejection(status: int | None, code: str | None) -> bool:
    """A 400 about this one request (too long, flagged): keep the row as invalid, send nothing more."""
    return status == 400 and code in PER_REQUEST_400_CODES


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if any."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def error_code(err: Any) -> str | None:
    """The `error.code` of an OpenAI error (an APIStatusError or its body), if it names one."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return inner["code"]
    code = getattr(err, "code", None)
    return code if isinstance(code, str) else None


def backoff_s(
    endpoint: EndpointConfig, retry: int, retry_after: float | None, jitter: random.Random
) -> float:
    """The wait before retry number `retry + 1`: exponential with jitter, at least the server's
    Retry-After (retrying sooner only earns another 429), which is capped at MAX_RETRY_AFTER_S."""
    backoff = min(endpoint.backoff_max_s, endpoint.backoff_base_s * 2**retry) * jitter.uniform(
        0.5, 1.0
    )
    if retry_after is None:
        return backoff
    return max(backoff, min(retry_after, MAX_RETRY_AFTER_S))
