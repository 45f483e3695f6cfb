"""The FastAPI app: health, models, chat completions, and the Files/Batch API emulation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgpo.llm.server.backend import ChatBackend
from sgpo.llm.server.faults import FaultConfig
from sgpo.llm.server.request_log import _RequestLog
from sgpo.llm.server.wire import (
    _error,
    _error_tuple,
    _logprobs_payload,
    _parse_params,
    canonical_request_hash,
)

if TYPE_CHECKING:
    import fastapi


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
