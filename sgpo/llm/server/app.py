"""The FastAPI app: `/health`, `/v1/models` and `/v1/chat/completions` around a backend; the
Files/Batch API emulation (sgpo.llm.server.batch_api) and injected faults only when asked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sgpo.llm.server.backend import ChatBackend
from sgpo.llm.server.batch_api import BatchAPI
from sgpo.llm.server.completions import Completer
from sgpo.llm.server.faults import FaultConfig
from sgpo.llm.server.request_log import RequestLog
from sgpo.llm.server.wire import error_reply, json_response

if TYPE_CHECKING:
    import fastapi


def build_app(
    backend: ChatBackend,
    *,
    model_name: str,
    faults: FaultConfig | None = None,
    request_log: str | Path | None = None,
    max_tokens_cap: int | None = None,
    default_max_tokens: int = 512,
    max_parallel: int | None = None,
    batch_api: bool = True,
) -> fastapi.FastAPI:
    """An OpenAI-compatible FastAPI app around `backend`.

    `max_tokens_cap` bounds every request's max_tokens (a tiny model rambles until the limit);
    an answer that hits the cap reports finish_reason "length", truthfully. `max_parallel` bounds
    the generations at once (1 for a model that generates one request at a time): a request
    waiting for its turn is dropped, not generated, when its client hangs up. `faults` injects
    failures (sgpo.llm.server.faults); `batch_api` serves the Files/Batch API emulation.
    """
    from fastapi import FastAPI

    app = FastAPI(title="sgpo local OpenAI-compatible server")
    completer = Completer(
        backend,
        model_name=model_name,
        request_log=RequestLog(request_log) if request_log is not None else None,
        faults=faults,
        max_tokens_cap=max_tokens_cap,
        default_max_tokens=default_max_tokens,
        max_parallel=max_parallel,
    )
    routes = ChatRoutes(completer)
    app.add_route("/health", routes.health, methods=["GET"])
    app.add_route("/v1/models", routes.models, methods=["GET"])
    app.add_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    if batch_api:
        BatchAPI(completer, faults).register(app)
    return app


async def until_disconnected(request) -> None:
    """Returns once the client of `request` (whose body has been read) has hung up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ChatRoutes:
    """The routes every app serves. Plain Starlette routes (request in, response out): FastAPI's
    annotation-driven injection cannot see `Request`, which is imported lazily."""

    def __init__(self, completer: Completer):
        self.completer = completer

    async def health(self, request):
        from fastapi.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.completer.model_name})

    async def models(self, request):
        from fastapi.responses import JSONResponse

        model = {
            "id": self.completer.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "sgpo",
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def chat_completions(self, request):
        client_id = request.headers.get("x-client-request-id")
        try:
            body = await request.json()
        except ValueError:
            self.completer.record(
                {
                    "request_hash": None,
                    "client_request_id": client_id,
                    "status": 400,
                    "fault": None,
                    "delivered": False,
                }
            )
            return json_response(
                error_reply(400, "request body is not valid JSON", "invalid_request_error")
            )
        reply = await self.completer.complete(
            body, client_id, client_gone=lambda: until_disconnected(request)
        )
        return json_response(reply)
