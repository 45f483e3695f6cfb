"""One chat completion, from a request body to a reply: what the sync endpoint and every batch item
go through (parsing, the attempt count, injected faults, the model, the request log)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from sgpo.llm.server.backend import ChatBackend
from sgpo.llm.server.faults import FaultConfig, injected_failure, spoil
from sgpo.llm.server.request_log import RequestLog
from sgpo.llm.server.wire import (
    Reply,
    canonical_request_hash,
    completion_body,
    error_reply,
    parse_params,
)


class Completer:
    """Answers chat-completion bodies with `backend`.

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
    ):
        self.backend, self.model_name = backend, model_name
        self.request_log, self.faults = request_log, faults
        self.max_tokens_cap, self.default_max_tokens = max_tokens_cap, default_max_tokens
        self.attempts: Counter = Counter()
        self._attempts_lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        if self.request_log is not None:
            self.request_log.write(entry)

    async def complete(
        self,
        body: Any,
        client_id: str | None,
        *,
        batch_id: str | None = None,
    ) -> Reply:
        """The reply to one request body (`batch_id`: an item of that batch)."""
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
        except Exception as e:  # a backend bug must reach the client as a 500, and the log
            self.record(
                {**base, "status": 500, "fault": None, "delivered": False, "error": repr(e)[:500]}
            )
            return error_reply(500, f"backend error: {type(e).__name__}", "server_error")

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
