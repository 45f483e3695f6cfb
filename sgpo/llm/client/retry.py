"""Classifying provider failures: Retry-After, error codes, per-request rejections."""

from __future__ import annotations

import email.utils
import time
from typing import Any

_MAX_RETRY_AFTER_S = 600.0

# 400s that are a property of one request, not of the configuration: re-sending it cannot help,
# failing the whole batch for one over-long or flagged prompt would be worse, so the row is kept
# as invalid with this reason. Every other 4xx (auth, unknown model, bad parameter) is fatal.
_PER_REQUEST_400_CODES = {
    "context_length_exceeded",
    "content_filter",
    "invalid_prompt",
    "content_policy_violation",
}


def _retry_after_s(headers: Any) -> float | None:
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


def _error_code(err: Any) -> str | None:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return inner["code"]
    code = getattr(err, "code", None)
    return code if isinstance(code, str) else None
