"""OpenAI's chat-completions wire format on the server side: parsing a request, error bodies,
logprobs in OpenAI's shape, and the hash that identifies a request body."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple


def canonical_request_hash(body: dict[str, Any]) -> str:
    """sha256 of the request body as canonical JSON, `stream` left out (it changes the framing, not the answer)."""
    payload = {k: v for k, v in body.items() if k != "stream"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Reply(NamedTuple):
    """A response before it becomes HTTP: the sync endpoint sends it, a batch writes it as a line."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def error_reply(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""
    return Reply(
        status,
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        headers,
    )


def json_response(reply: Reply):
    from fastapi.responses import JSONResponse

    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def _message_text(content: Any) -> str:
    # OpenAI accepts content as a string or a list of parts; only text parts make sense here.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    raise ValueError("message content must be a string or a list of text parts")


@dataclass
class ChatParams:
    """The parts of a chat-completions request that decide the answer."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    top_logprobs: int | None
    stop: list[str] | None


def parse_params(body: Any, *, default_max_tokens: int, max_tokens_cap: int | None) -> ChatParams:
    """Validate the request body; raises ValueError with an OpenAI-style message."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    if body.get("stream"):
        raise ValueError("stream=true is not supported by this server")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ValueError(f"n={n} is not supported: only n=1")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ValueError("messages must be a non-empty list")
    messages = []
    for m in raw_messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError("each message needs a string role")
        messages.append({"role": m["role"], "content": _message_text(m.get("content", ""))})
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("max_tokens must be a positive integer")
    if max_tokens_cap is not None:
        max_tokens = min(max_tokens, max_tokens_cap)
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else float(temperature)
    top_p = body.get("top_p", 1.0)
    top_p = 1.0 if top_p is None else float(top_p)
    if not 0 <= temperature <= 2:
        raise ValueError("temperature must be in [0, 2]")
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError("seed must be an integer")
    top_logprobs: int | None = None
    if body.get("logprobs"):
        top_logprobs = body.get("top_logprobs") or 0
        if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ValueError("top_logprobs must be an integer in [0, 20]")
    elif body.get("top_logprobs") is not None:
        raise ValueError("top_logprobs requires logprobs=true")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        raise ValueError("stop must be a string or a list of strings")
    return ChatParams(messages, max_tokens, temperature, top_p, seed, top_logprobs, stop or None)


def logprobs_payload(logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    def one(e: dict[str, Any]) -> dict[str, Any]:
        raw = e.get("bytes")
        return {
            "token": e["token"],
            "logprob": float(e["logprob"]),
            "bytes": list(raw) if raw is not None else list(e["token"].encode("utf-8")),
        }

    return {
        "content": [
            {**one(e), "top_logprobs": [one(t) for t in e.get("top_logprobs", [])]}
            for e in logprobs
        ],
        "refusal": None,
    }


def completion_body(
    *,
    model_name: str,
    text: str,
    finish_reason: str,
    logprobs: list[dict[str, Any]] | None,
    want_logprobs: bool,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """One answer as OpenAI's `chat.completion` object."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": logprobs_payload(logprobs)
                if want_logprobs and logprobs is not None
                else None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
