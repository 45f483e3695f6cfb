"""OpenAI's Files and Batch API, emulated in memory: what the client's batch mode talks to.

`/v1/files` (multipart upload, metadata, content) and `/v1/batches` (create, retrieve, list). A
batch runs in the background: each input line goes through the same `Completer` as a sync
request (so it meets the same faults and lands in the same request log), and its output and
error lines become files. Faults of its own: a slow batch (`batch_latency_s`) and batches that
expire part-way (`expire_batches`, `expire_after_items`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from sgpo.llm.server.completions import Completer
from sgpo.llm.server.faults import FaultConfig
from sgpo.llm.server.wire import error_reply, json_response

if TYPE_CHECKING:
    import fastapi

# What OpenAI reports when the input file is not a valid batch.
_INVALID_INPUT = (
    "each line needs a unique custom_id, method POST, url /v1/chat/completions and a body"
)


def multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
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


def _bad_line(lines: list[dict[str, Any]]) -> int | None:
    """The first line (1-based) that is not a valid batch item, or a repeated custom_id's."""
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
    ids = [x.get("custom_id") for x in lines]
    if bad is None and len(set(ids)) != len(ids):
        bad = next(n for n, i in enumerate(ids, 1) if ids.count(i) > 1)
    return bad


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class BatchAPI:
    """The in-memory files and batches of one app, and the routes that serve them."""

    def __init__(self, completer: Completer, faults: FaultConfig | None = None):
        self.completer, self.faults = completer, faults
        self.files: dict[str, dict[str, Any]] = {}  # uploads and outputs
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order
        self.tasks: set = set()  # running batches (a reference keeps asyncio from dropping them)
        self._lock = threading.Lock()

    def register(self, app: fastapi.FastAPI) -> None:
        app.add_route("/v1/files", self.upload_file, methods=["POST"])
        app.add_route("/v1/files/{file_id}", self.file_meta, methods=["GET"])
        app.add_route("/v1/files/{file_id}/content", self.file_content, methods=["GET"])
        app.add_route("/v1/batches", self.create_batch, methods=["POST"])
        app.add_route("/v1/batches", self.list_batches, methods=["GET"])
        app.add_route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"])

    # ---------------------------------------------------------------- files

    def _file_object(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": f["created_at"],
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    def _new_file(self, data: bytes, filename: str, purpose: str) -> str:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        self.files[fid] = {
            "data": data,
            "filename": filename,
            "purpose": purpose,
            "created_at": int(time.time()),
        }
        return fid

    def _no_such_file(self, fid: str):
        return json_response(
            error_reply(404, f"No such File object: {fid}", "invalid_request_error")
        )

    async def upload_file(self, request):
        from fastapi.responses import JSONResponse

        fields = multipart_fields(request.headers.get("content-type", ""), await request.body())
        if "file" not in fields or "purpose" not in fields:
            return json_response(
                error_reply(
                    400,
                    "multipart fields 'file' and 'purpose' are required",
                    "invalid_request_error",
                )
            )
        data, filename = fields["file"]
        fid = self._new_file(data, filename or "upload.jsonl", fields["purpose"][0].decode())
        return JSONResponse(self._file_object(fid))

    async def file_meta(self, request):
        from fastapi.responses import JSONResponse

        fid = request.path_params["file_id"]
        if fid not in self.files:
            return self._no_such_file(fid)
        return JSONResponse(self._file_object(fid))

    async def file_content(self, request):
        from fastapi.responses import Response

        fid = request.path_params["file_id"]
        if fid not in self.files:
            return self._no_such_file(fid)
        return Response(self.files[fid]["data"], media_type="application/octet-stream")

    # ---------------------------------------------------------------- batches

    async def create_batch(self, request):
        from fastapi.responses import JSONResponse

        body = await request.json()
        fid = body.get("input_file_id")
        if fid not in self.files:
            return json_response(
                error_reply(400, f"input_file_id {fid!r} does not exist", "invalid_request_error")
            )
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return json_response(
                error_reply(
                    400,
                    "only endpoint /v1/chat/completions and completion_window 24h",
                    "invalid_request_error",
                )
            )
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        with self._lock:
            index = len(self.batches)
            self.batches[bid] = {
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
        self.completer.record(
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
        task = asyncio.get_running_loop().create_task(self.run_batch(bid, index))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return JSONResponse(self.batches[bid])

    async def get_batch(self, request):
        from fastapi.responses import JSONResponse

        bid = request.path_params["batch_id"]
        if bid not in self.batches:
            return json_response(
                error_reply(404, f"No such Batch object: {bid}", "invalid_request_error")
            )
        return JSONResponse(self.batches[bid])

    async def list_batches(self, request):
        from fastapi.responses import JSONResponse

        data = list(reversed(self.batches.values()))  # newest first, as OpenAI lists them
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    async def run_batch(self, bid: str, index: int) -> None:
        """Validate the input, answer every line through the completer, write the output files."""
        b = self.batches[bid]
        try:
            lines = [
                json.loads(x)
                for x in self.files[b["input_file_id"]]["data"].decode().splitlines()
                if x.strip()
            ]
            bad = _bad_line(lines)
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
                            "message": _INVALID_INPUT,
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
        faults = self.faults
        expire = faults is not None and index < faults.expire_batches
        out, err = [], []
        for n, item in enumerate(lines):
            line_id = f"batch_req_{uuid.uuid4().hex[:24]}"
            if expire and n >= faults.expire_after_items:
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
            status, payload, _ = await self.completer.complete(
                item["body"], item["custom_id"], batch_id=bid
            )
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
        if faults is not None and faults.batch_latency_s:  # a slow batch: in progress this long
            await asyncio.sleep(max(0.0, faults.batch_latency_s - (time.monotonic() - t0)))
        b.update(status="finalizing", finalizing_at=int(time.time()))
        b["output_file_id"] = (
            self._new_file(_jsonl(out), f"{bid}_output.jsonl", "batch_output") if out else None
        )
        b["error_file_id"] = (
            self._new_file(_jsonl(err), f"{bid}_error.jsonl", "batch_output") if err else None
        )
        now = int(time.time())
        if expire:
            b.update(status="expired", expired_at=now)
        else:
            b.update(status="completed", completed_at=now)
