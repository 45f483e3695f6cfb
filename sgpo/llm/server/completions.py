"""One chat completion, from a request body to a reply: what the sync endpoint and every batch item
go through (parsing, the attempt count, injected faults, a turn at the model, the request log)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sgpo.llm.server.backend import BackendClosed, ChatBackend
from sgpo.llm.server.faults import FaultConfig, injected_failure, spoil
from sgpo.llm.server.request_log import RequestLog
from sgpo.llm.server.wire import (
    Reply,
    canonical_request_hash,
    completion_body,
    error_reply,
    parse_params,
)

# nginx's "client closed request": the status logged for a request dropped before generation
CLIENT_GONE = 499


class Completer:
    """Answers chat-completion bodies with `backend`.

    `max_parallel` bounds the generations running at once (None: the backend's own business). A
    request waits for its turn; if its client hangs up (or times out) before that, it is dropped
    without being generated, so a client's retries never queue behind work nobody waits for.
    `attempts` counts the requests seen per body: the request log's `attempt`, and what faults
    are decided on."""

    def __init__(
        self,
        backend: ChatBackend,
        *,
        model_name: str,
        request_log: RequestLog | None = None,
        faults: FaultConfig | None = None,
        max_tokens_cap: int | None = None,
        default_max_tokens: int = 512,
        max_parallel: int | None = None,
    ):
        self.backend, self.model_name = backend, model_name
        self.request_log, self.faults = request_log, faults
        self.max_tokens_cap, self.default_max_tokens = max_tokens_cap, default_max_tokens
        self.attempts: Counter = Counter()
        self._attempts_lock = threading.Lock()
        self._turns = asyncio.Semaphore(max_parallel) if max_parallel is not None else None

    def record(self, entry: dict[str, Any]) -> None:
        if self.request_log is not None:
            self.request_log.write(entry)

    async def complete(
        self,
        body: Any,
        client_id: str | None,
        *,
        batch_id: str | None = None,
        client_gone: Callable[[], Awaitable[None]] | None = None,
    ) -> Reply:
        """The reply to one request body. `client_gone()` returns once the client has hung up
        (sync requests only: a batch item has no client connection)."""
        from starlette.concurrency import run_in_threadpool

        req_hash = canonical_request_hash(body) if isinstance(body, dict) else None
        base: dict[str, Any] = {"request_hash": req_hash, "client_request_id": client_id}
        if batch_id is not None:
            base["batch_id"] = batch_id
        try:
            params = parse_params(
                body, default_max_tokens=self.default_max_tokens, max_tokens_cap=self.max_tokens_cap
            )
        except (ValueError, TypeError) as e:
            self.record({**base, "attempt": None, "status": 400, "fault": None, "delivered": False})
            return error_reply(400, str(e), "invalid_request_error")

        with self._attempts_lock:
            attempt = self.attempts[req_hash]
            self.attempts[req_hash] += 1
        base["attempt"] = attempt
        fault = None
        if self.faults is not None:
            fault = self.faults.decide(req_hash, attempt)
            failure = await injected_failure(
                self.faults,
                fault,
                in_batch=batch_id is not None,
                record=lambda status: self.record(
                    {**base, "status": status, "fault": fault, "delivered": False}
                ),
            )
            if failure is not None:
                return failure

        if not await self._take_turn(client_gone):
            self.record(
                {**base, "status": CLIENT_GONE, "fault": fault, "delivered": False, "dropped": True}
            )
            return error_reply(
                CLIENT_GONE, "the client left before its turn: not generated", "client_gone"
            )
        try:
            result = await run_in_threadpool(
                self.backend.chat,
                params.messages,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                top_logprobs=params.top_logprobs,
                stop=params.stop,
            )
        except BackendClosed as e:  # the server is shutting down
            self.record(
                {**base, "status": 503, "fault": None, "delivered": False, "error": str(e)[:500]}
            )
            return error_reply(503, "the server is shutting down", "server_error")
        except Exception as e:  # a backend bug must reach the client as a 500, and the log
            self.record(
                {**base, "status": 500, "fault": None, "delivered": False, "error": repr(e)[:500]}
            )
            return error_reply(500, f"backend error: {type(e).__name__}", "server_error")
        finally:
            if self._turns is not None:
                self._turns.release()

        text, finish, n_completion, logprobs = spoil(
            fault, result.text, result.finish_reason, result.completion_tokens, result.logprobs
        )
        body_out = completion_body(
            model_name=self.model_name,
            text=text,
            finish_reason=finish,
            logprobs=logprobs,
            want_logprobs=params.top_logprobs is not None,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=n_completion,
        )
        # Logged before the response leaves: "delivered" = the server committed to sending a
        # completion (it may still be lost if the client dies in between; see sgpo.llm.client).
        self.record(
            {
                **base,
                "status": 200,
                "fault": fault,
                "delivered": True,
                "finish_reason": finish,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": n_completion,  # what is billed
            }
        )
        return Reply(200, body_out)

    async def _take_turn(self, client_gone: Callable[[], Awaitable[None]] | None) -> bool:
        """Wait for a turn to generate; False (and no turn held) when the client left first."""
        if client_gone is None:
            if self._turns is not None:
                await self._turns.acquire()
            return True
        gone = asyncio.ensure_future(client_gone())
        turn = asyncio.ensure_future(self._turns.acquire()) if self._turns is not None else None
        try:
            if turn is None:
                await asyncio.sleep(0)  # lets `gone` see a hang-up that has already happened
            else:
                await asyncio.wait({turn, gone}, return_when=asyncio.FIRST_COMPLETED)
            left = gone.done()
        finally:
            gone.cancel()
            if turn is not None and not turn.done():
                turn.cancel()  # the semaphore passes a turn granted meanwhile on to the next
        if turn is None:
            return not left
        if not turn.done():  # cancelled above: the client left first
            return False
        if left:
            self._turns.release()
            return False
        return True
