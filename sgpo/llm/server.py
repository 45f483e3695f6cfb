"""A local OpenAI-compatible chat server: the stand-in for the paid external LLM.

It serves `POST /v1/chat/completions` in exactly OpenAI's `chat.completion` shape, so the
pipeline's client (the official `openai` package) cannot tell it from the real thing. Two uses:

* the embedded external LLM when an endpoint has no `base_url` (tiny runs, CI, offline work);
* fault injection (`FaultConfig`): 429 with Retry-After, 500, slow answers that the client
  times out on, empty and truncated answers, decided deterministically so tests reproduce.

It also serves OpenAI's Batch API (`/v1/files` upload and content, `/v1/batches` create,
retrieve and list), kept in memory; batch items go through the same completion code and faults,
and a batch can be made slow (`batch_latency_s`) or expire part-way (`expire_batches`).

Every request can be appended to a JSONL request log (one line per request, flushed at once),
so tests can prove that no request whose completion was delivered was ever sent again.

Run it on its own with
`python -m sgpo.llm.server --model DIR --port 8000 --served-model-name tiny [--fault-config JSON]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import fastapi

FinishReason = Literal["stop", "length"]
FaultKind = Literal["429", "500", "timeout", "empty", "truncated"]


# --------------------------------------------------------------------------- backends


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


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level BPE alphabet: each byte is shown as one printable character. Inverting
    # it recovers a token's exact bytes, which `decode` cannot for a split UTF-8 character.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


class TransformersChatBackend:
    """A causal LM served with `transformers.generate`, one request at a time.

    Determinism: with a `seed`, the torch RNG is seeded right before `generate` under the same
    lock that serialises generation, so an equal request gives an equal answer whatever else the
    server is doing. (Global seeding is fine here: the model is the process's only RNG user.)

    Log-probabilities come from the *raw* logits (`output_logits`), log-softmaxed: the model's own
    next-token distribution at temperature 1, independent of temperature/top-p. The processed
    scores would give -inf to every token that top-p cut, which is useless to a judge reading
    P("m") vs P("M"); the raw distribution is also what the policy's likelihoods are computed on.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", *, dtype: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from sgpo.models.tinykit import load_tokenizer

        self.model_dir = str(model_dir)
        self.device = device
        self.tokenizer = load_tokenizer(self.model_dir)
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.model = (
            AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch_dtype)
            .to(device)
            .eval()
        )
        eos: set[int] = set()
        for ids in (
            self.tokenizer.eos_token_id,
            getattr(self.model.generation_config, "eos_token_id", None),
        ):
            if isinstance(ids, int):
                eos.add(ids)
            elif ids:
                eos.update(int(i) for i in ids)
        if not eos:
            raise ValueError(
                f"{self.model_dir}: tokenizer and generation config name no end-of-sequence token"
            )
        self.eos_ids = sorted(eos)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.eos_ids[0]
        )
        self._lock = threading.Lock()  # one model, one generate() at a time

    def _token_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.tokenizer.decode([token_id])
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece and all(ch in _BYTE_DECODER for ch in piece):
            raw = bytes(_BYTE_DECODER[ch] for ch in piece)
        else:
            raw = text.encode("utf-8")
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

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
    ) -> ChatResult:
        import torch

        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        n_prompt = int(enc["input_ids"].shape[1])
        sample = temperature > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_tokens,
            do_sample=sample,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=top_logprobs is not None,
        )
        if sample:
            # OpenAI has no top-k: top_k=0 keeps the checkpoint's default (often 50) from applying
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**enc, **kwargs)
        new_ids = out.sequences[0, n_prompt:].tolist()
        # generate pads nothing for a single sequence, but strip defensively; stop at the first eos.
        ended = False
        content_ids: list[int] = []
        for t in new_ids:
            if t in self.eos_ids:
                ended = True
                break
            content_ids.append(t)
        n_generated = len(content_ids) + (1 if ended else 0)
        text = self.tokenizer.decode(content_ids, skip_special_tokens=True)
        finish: FinishReason = "stop" if ended else "length"

        logprobs: list[dict[str, Any]] | None = None
        if top_logprobs is not None:
            logprobs = []
            for step, t in enumerate(content_ids):
                logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                entry = self._token_entry(t, float(logp[t]))
                tops = []
                if top_logprobs > 0:
                    vals, idx = torch.topk(logp, k=min(top_logprobs, logp.shape[-1]))
                    tops = [
                        self._token_entry(int(i), float(v))
                        for v, i in zip(vals.tolist(), idx.tolist())
                    ]
                entry["top_logprobs"] = tops
                logprobs.append(entry)

        if stop:
            cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                if logprobs is not None:
                    # keep the tokens whose decoded prefix still lies within the kept text
                    keep = 0
                    while (
                        keep < len(content_ids)
                        and len(
                            self.tokenizer.decode(content_ids[: keep + 1], skip_special_tokens=True)
                        )
                        <= cut
                    ):
                        keep += 1
                    logprobs = logprobs[:keep]
        return ChatResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=n_prompt,
            completion_tokens=n_generated,
            logprobs=logprobs,
        )


# --------------------------------------------------------------------------- faults


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


# --------------------------------------------------------------------------- app


def canonical_request_hash(body: dict[str, Any]) -> str:
    """sha256 of the request body as canonical JSON, `stream` left out (it changes the framing, not the answer)."""
    payload = {k: v for k, v in body.items() if k != "stream"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _RequestLog:
    """Append-only JSONL; one os.write per line on an O_APPEND fd, so lines never interleave."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        weakref.finalize(self, os.close, self._fd)  # closed with the app that owns it

    def write(self, entry: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))


def read_request_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a request log (for tests and audits)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


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
class _Params:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    top_logprobs: int | None
    stop: list[str] | None


def _parse_params(body: Any, *, default_max_tokens: int, max_tokens_cap: int | None) -> _Params:
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
    return _Params(messages, max_tokens, temperature, top_p, seed, top_logprobs, stop or None)


def _logprobs_payload(logprobs: list[dict[str, Any]]) -> dict[str, Any]:
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


@dataclass
class _ServerState:
    attempts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # Batch API: uploads and outputs, in memory
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # in creation order
    tasks: set = field(
        default_factory=set
    )  # running batches (a reference keeps asyncio from dropping them)


def _error_tuple(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
):
    return (
        status,
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        headers,
    )


def _multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, filename) of a multipart/form-data body (stdlib only: no python-multipart here)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    out: dict[str, tuple[bytes, str | None]] = {}
    if not msg.is_multipart():
        return out
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[name] = (part.get_payload(decode=True) or b"", part.get_filename())
    return out


def build_app(
    backend: ChatBackend,
    *,
    model_name: str,
    faults: FaultConfig | None = None,
    request_log: str | Path | None = None,
    max_tokens_cap: int | None = None,
    default_max_tokens: int = 512,
) -> fastapi.FastAPI:
    """An OpenAI-compatible FastAPI app around `backend`.

    `max_tokens_cap` bounds every request's max_tokens (a tiny model rambles until the limit);
    an answer that hits the cap reports finish_reason "length", truthfully.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="sgpo local OpenAI-compatible server")
    state = _ServerState()
    log = _RequestLog(request_log) if request_log is not None else None

    def record(entry: dict[str, Any]) -> None:
        if log is not None:
            log.write({"ts": time.time(), **entry})

    # Plain Starlette routes (request in, response out): FastAPI's annotation-driven injection
    # cannot see `Request` here, since it is imported lazily and annotations are strings.
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model_name})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "sgpo"}],
            }
        )

    async def chat_completions(request: Request) -> JSONResponse:
        client_id = request.headers.get("x-client-request-id")
        try:
            body = await request.json()
        except ValueError:
            record(
                {
                    "request_hash": None,
                    "client_request_id": client_id,
                    "status": 400,
                    "fault": None,
                    "delivered": False,
                }
            )
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        status, payload, headers = await complete(body, client_id)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def complete(
        body: Any, client_id: str | None, batch_id: str | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """One chat completion (status, JSON body, headers): the sync endpoint and batch items share it.

        In a batch (`batch_id` set) an injected 429/500/timeout fails the item at once: the batch
        reports it in its error file, and there is no client connection to time out."""
        req_hash = canonical_request_hash(body) if isinstance(body, dict) else None
        base: dict[str, Any] = {"request_hash": req_hash, "client_request_id": client_id}
        if batch_id is not None:
            base["batch_id"] = batch_id
        try:
            params = _parse_params(
                body, default_max_tokens=default_max_tokens, max_tokens_cap=max_tokens_cap
            )
        except (ValueError, TypeError) as e:
            record({**base, "attempt": None, "status": 400, "fault": None, "delivered": False})
            return _error_tuple(400, str(e), "invalid_request_error")

        with state.lock:
            attempt = state.attempts[req_hash]
            state.attempts[req_hash] += 1
        base["attempt"] = attempt
        fault = faults.decide(req_hash, attempt) if faults is not None else None
        if faults is not None and faults.latency_s and batch_id is None:
            await asyncio.sleep(faults.latency_s)
        if batch_id is not None and fault == "timeout":
            record({**base, "status": 500, "fault": fault, "delivered": False})
            return _error_tuple(500, "The request timed out (injected)", "server_error")

        if fault == "429":
            record({**base, "status": 429, "fault": fault, "delivered": False})
            retry_after = faults.retry_after_s  # type: ignore[union-attr]
            headers = {
                "Retry-After": f"{retry_after:g}",
                "retry-after-ms": str(int(retry_after * 1000)),
            }
            return _error_tuple(
                429, "Rate limit reached (injected)", "requests", "rate_limit_exceeded", headers
            )
        if fault == "500":
            record({**base, "status": 500, "fault": fault, "delivered": False})
            return _error_tuple(500, "The server had an error (injected)", "server_error")
        if fault == "timeout":
            # logged up front: the client usually hangs up first, and a server shutting down
            # cancels the sleep, yet the log must still show this attempt
            record({**base, "status": 504, "fault": fault, "delivered": False})
            await asyncio.sleep(faults.timeout_sleep_s)  # type: ignore[union-attr]
            return _error_tuple(504, "Upstream timed out (injected)", "server_error")

        try:
            result = await run_in_threadpool(
                backend.chat,
                params.messages,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                top_logprobs=params.top_logprobs,
                stop=params.stop,
            )
        except Exception as e:  # a backend bug must reach the client as a 500, and the log
            record(
                {**base, "status": 500, "fault": None, "delivered": False, "error": repr(e)[:500]}
            )
            return _error_tuple(500, f"backend error: {type(e).__name__}", "server_error")

        text, finish, n_completion, logprobs = (
            result.text,
            result.finish_reason,
            result.completion_tokens,
            result.logprobs,
        )
        if fault == "empty":
            # what was generated is billed although nothing usable came back (as providers do)
            text, logprobs = "", ([] if logprobs is not None else None)
        elif fault == "truncated":
            text, finish = text[: len(text) // 2], "length"
            if logprobs is not None:
                logprobs = logprobs[: len(logprobs) // 2]
            n_completion = max(1, n_completion // 2)

        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "finish_reason": finish,
                    "logprobs": _logprobs_payload(logprobs)
                    if params.top_logprobs is not None
                    else None,
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": n_completion,
                "total_tokens": result.prompt_tokens + n_completion,
            },
        }
        # Logged before the response leaves: "delivered" = the server committed to sending a
        # completion (it may still be lost if the client dies in between; see client.py).
        record(
            {
                **base,
                "status": 200,
                "fault": fault,
                "delivered": True,
                "finish_reason": finish,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": n_completion,
            }
        )  # what is billed
        return 200, payload, None

    # ------------------------------------------------------------------ files and batches (Batch API)

    def _file_object(fid: str) -> dict[str, Any]:
        f = state.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": f["created_at"],
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    def _new_file(data: bytes, filename: str, purpose: str) -> str:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        state.files[fid] = {
            "data": data,
            "filename": filename,
            "purpose": purpose,
            "created_at": int(time.time()),
        }
        return fid

    async def upload_file(request: Request) -> JSONResponse:
        fields = _multipart_fields(request.headers.get("content-type", ""), await request.body())
        if "file" not in fields or "purpose" not in fields:
            return _error(
                400, "multipart fields 'file' and 'purpose' are required", "invalid_request_error"
            )
        data, filename = fields["file"]
        fid = _new_file(data, filename or "upload.jsonl", fields["purpose"][0].decode())
        return JSONResponse(_file_object(fid))

    async def file_meta(request: Request) -> JSONResponse:
        fid = request.path_params["file_id"]
        if fid not in state.files:
            return _error(404, f"No such File object: {fid}", "invalid_request_error")
        return JSONResponse(_file_object(fid))

    async def file_content(request: Request):
        from fastapi.responses import Response

        fid = request.path_params["file_id"]
        if fid not in state.files:
            return _error(404, f"No such File object: {fid}", "invalid_request_error")
        return Response(state.files[fid]["data"], media_type="application/octet-stream")

    async def create_batch(request: Request) -> JSONResponse:
        body = await request.json()
        fid = body.get("input_file_id")
        if fid not in state.files:
            return _error(400, f"input_file_id {fid!r} does not exist", "invalid_request_error")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(
                400,
                "only endpoint /v1/chat/completions and completion_window 24h",
                "invalid_request_error",
            )
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        with state.lock:
            index = len(state.batches)
            state.batches[bid] = {
                "id": bid,
                "object": "batch",
                "endpoint": body["endpoint"],
                "errors": None,
                "input_file_id": fid,
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "in_progress_at": None,
                "expires_at": now + 86400,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
        record(
            {
                "event": "batch_create",
                "batch_id": bid,
                "request_hash": None,
                "client_request_id": None,
                "status": 200,
                "fault": None,
                "delivered": False,
            }
        )
        task = asyncio.get_running_loop().create_task(run_batch(bid, index))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        return JSONResponse(state.batches[bid])

    async def get_batch(request: Request) -> JSONResponse:
        bid = request.path_params["batch_id"]
        if bid not in state.batches:
            return _error(404, f"No such Batch object: {bid}", "invalid_request_error")
        return JSONResponse(state.batches[bid])

    async def list_batches(request: Request) -> JSONResponse:
        data = list(reversed(state.batches.values()))  # newest first, as OpenAI lists them
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    async def run_batch(bid: str, index: int) -> None:
        b = state.batches[bid]
        try:
            lines = [
                json.loads(x)
                for x in state.files[b["input_file_id"]]["data"].decode().splitlines()
                if x.strip()
            ]
            ids = [x.get("custom_id") for x in lines]
            bad = next(
                (
                    n
                    for n, x in enumerate(lines, 1)
                    if not isinstance(x.get("custom_id"), str)
                    or x.get("method") != "POST"
                    or x.get("url") != "/v1/chat/completions"
                    or not isinstance(x.get("body"), dict)
                ),
                None,
            )
            if bad is None and len(set(ids)) != len(ids):
                bad = next(n for n, i in enumerate(ids, 1) if ids.count(i) > 1)
        except (ValueError, AttributeError):
            lines, bad = [], 1
        if bad is not None or not lines:
            b.update(
                status="failed",
                failed_at=int(time.time()),
                errors={
                    "object": "list",
                    "data": [
                        {
                            "code": "invalid_request",
                            "message": "each line needs a unique custom_id, method POST, url "
                            "/v1/chat/completions and a body",
                            "param": None,
                            "line": bad or 1,
                        }
                    ],
                },
            )
            return
        t0 = time.monotonic()
        b.update(status="in_progress", in_progress_at=int(time.time()))
        b["request_counts"]["total"] = len(lines)
        expire = faults is not None and index < faults.expire_batches
        out, err = [], []
        for n, item in enumerate(lines):
            line_id = f"batch_req_{uuid.uuid4().hex[:24]}"
            if expire and n >= faults.expire_after_items:  # type: ignore[union-attr]
                err.append(
                    {
                        "id": line_id,
                        "custom_id": item["custom_id"],
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the "
                            "completion window expired.",
                        },
                    }
                )
                b["request_counts"]["failed"] += 1
                continue
            status, payload, _ = await complete(item["body"], item["custom_id"], batch_id=bid)
            line = {
                "id": line_id,
                "custom_id": item["custom_id"],
                "error": None,
                "response": {
                    "status_code": status,
                    "request_id": uuid.uuid4().hex,
                    "body": payload,
                },
            }
            (out if status == 200 else err).append(line)
            b["request_counts"]["completed" if status == 200 else "failed"] += 1
        if (
            faults is not None and faults.batch_latency_s
        ):  # a slow batch: it stays in progress this long
            await asyncio.sleep(max(0.0, faults.batch_latency_s - (time.monotonic() - t0)))
        b.update(status="finalizing", finalizing_at=int(time.time()))

        def jsonl(rows: list[dict]) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in rows).encode()

        b["output_file_id"] = (
            _new_file(jsonl(out), f"{bid}_output.jsonl", "batch_output") if out else None
        )
        b["error_file_id"] = (
            _new_file(jsonl(err), f"{bid}_error.jsonl", "batch_output") if err else None
        )
        now = int(time.time())
        b.update(status="expired", expired_at=now) if expire else b.update(
            status="completed", completed_at=now
        )

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/files", upload_file, methods=["POST"])
    app.add_route("/v1/files/{file_id}", file_meta, methods=["GET"])
    app.add_route("/v1/files/{file_id}/content", file_content, methods=["GET"])
    app.add_route("/v1/batches", create_batch, methods=["POST"])
    app.add_route("/v1/batches", list_batches, methods=["GET"])
    app.add_route("/v1/batches/{batch_id}", get_batch, methods=["GET"])
    return app


# --------------------------------------------------------------------------- running


def _wait_healthy(url: str, thread: threading.Thread, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"the server thread exited before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s (last error: {last!r})")


@contextlib.contextmanager
def running_server(
    app: fastapi.FastAPI, host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 30.0
) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yields the base URL `http://HOST:PORT/v1`.

    With port=0 the OS picks a free port: we bind the socket ourselves and hand it to uvicorn,
    so there is no window in which another process could take the port.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: uvicorn then sets TCP_NODELAY on accepted connections; with proto 0
    # it does not, and every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    actual_port = sock.getsockname()[1]
    netloc = f"[{host}]:{actual_port}" if family == socket.AF_INET6 else f"{host}:{actual_port}"
    # lifespan off: the app has no startup hooks; graceful timeout: don't hang on a sleeping 'timeout' fault.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{actual_port}", daemon=True
    )
    thread.start()
    try:
        _wait_healthy(f"http://{netloc}/health", thread, startup_timeout_s)
        yield f"http://{netloc}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sgpo.llm.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", required=True, help="Local model dir (saved with save_pretrained)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="Model id reported to clients (default: the dir name)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--fault-config", default=None, help="FaultConfig as a JSON string or a path to a JSON file"
    )
    parser.add_argument(
        "--request-log", default=None, help="Append one JSON line per request to this file"
    )
    parser.add_argument(
        "--max-tokens-cap", type=int, default=None, help="Upper bound on any request's max_tokens"
    )
    args = parser.parse_args(argv)

    import uvicorn

    faults = None
    if args.fault_config:
        raw = args.fault_config
        if not raw.lstrip().startswith("{") and Path(raw).exists():
            raw = Path(raw).read_text()
        faults = FaultConfig.model_validate_json(raw)
    backend = TransformersChatBackend(args.model, device=args.device)
    app = build_app(
        backend,
        model_name=args.served_model_name or Path(args.model).name,
        faults=faults,
        request_log=args.request_log,
        max_tokens_cap=args.max_tokens_cap,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
