"""Sync mode: concurrent requests with retries and re-asks, each record journaled as it arrives."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from artifacts.lease import Lease, LeaseLost, held_lease
from sgpo.config import EndpointConfig
from sgpo.llm.client.completions import (
    answer_record,
    not_a_chat_completion,
    request_body,
    unusable_reason,
)
from sgpo.llm.client.cost import summarize
from sgpo.llm.client.credentials import redact, resolve_api_key
from sgpo.llm.client.errors import LLMCallError
from sgpo.llm.client.journal import Journal, without_pending
from sgpo.llm.client.records import CallRecord, CallSummary, ChatRequest
from sgpo.llm.client.retry import (
    RETRIABLE_4XX,
    backoff_s,
    error_code,
    is_per_request_rejection,
    retry_after_s,
)

log = logging.getLogger(__name__)
_sleep = asyncio.sleep  # module-level so tests can observe backoff delays without timing anything


class _Aborted(Exception):
    """Another request failed fatally; this one stops without sending more."""


class SyncCaller:
    """Sends one request at a time for `call_all_async`: transport retries with backoff, re-asks of
    invalid answers; `failed` stops every request of the run once one has failed fatally."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        api_key: str,
        validate: Callable[[CallRecord], str | None] | None,
        allow_truncated: bool = False,
        lease: Lease | None = None,
    ):
        import openai

        self.openai = openai
        self.lease = lease  # the stage's lease: confirmed before each request is sent
        self.endpoint = endpoint
        self.api_key = api_key
        self.validate = validate
        self.allow_truncated = allow_truncated
        self.client = openai.AsyncOpenAI(
            base_url=endpoint.base_url, api_key=api_key, timeout=endpoint.timeout_s, max_retries=0
        )
        self.failed = asyncio.Event()
        self.http_requests = 0
        self._jitter = random.Random()  # timing only: never affects what is recorded

    def _fail(
        self, req: ChatRequest, attempts: int, last: str, *, retriable: bool = False
    ) -> LLMCallError:
        last = redact(last, self.api_key)
        return LLMCallError(
            f"LLM request {req.key!r} to {self.endpoint.base_url} (model {self.endpoint.model}) failed after "
            f"{attempts} attempt(s): {last}",
            endpoint=self.endpoint.base_url,
            key=req.key,
            retriable=retriable,
            last_error=last,
        )

    def _not_openai(self, status: int, problem: str, body: str) -> LLMCallError:
        snippet = redact(" ".join(body[:120].split()), self.api_key)
        msg = (
            f"the endpoint at {self.endpoint.base_url} did not answer as an OpenAI-compatible API (got {problem}, "
            f"HTTP {status}: {snippet!r}); check base_url (OpenAI-compatible servers usually end in /v1)"
        )
        return LLMCallError(
            msg, endpoint=self.endpoint.base_url, last_error=f"not an OpenAI answer: {problem}"
        )

    async def _send(
        self, req: ChatRequest, seed: int | None, request_hash: str, counter: list[int]
    ):
        """One answer, retrying transport errors. Returns (completion, raw_json) or a per-request 400 error."""
        ep = self.endpoint
        kwargs = request_body(ep.model, req, seed)
        last = "no attempt made"
        for retry in range(ep.max_retries + 1):
            if self.failed.is_set():
                raise _Aborted()
            if self.lease is not None:
                # a run that stalled and lost its lease stops here: the new holder pays instead
                self.lease.confirm()
            counter[0] += 1
            self.http_requests += 1
            retry_after: float | None = None
            try:
                # X-Client-Request-Id: OpenAI's tracing header; lets server logs be matched to journal records.
                raw = await self.client.chat.completions.with_raw_response.create(
                    **kwargs, extra_headers={"X-Client-Request-Id": request_hash}
                )
                completion = raw.parse()
                if (
                    problem := not_a_chat_completion(completion, raw.headers.get("content-type"))
                ) is not None:
                    # a web page or another API at this URL: re-sending cannot help, and it is no answer
                    raise self._not_openai(raw.status_code, problem, raw.text)
                return completion, raw.text
            except self.openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}: {e.message}"
                code = error_code(e)
                if is_per_request_rejection(status, code):
                    return e, None
                if status < 500 and status not in RETRIABLE_4XX:
                    ctype = e.response.headers.get("content-type") or ""
                    if (
                        "json" not in ctype
                    ):  # e.g. a web server's 404 page: wrong URL, not a rejected request
                        raise self._not_openai(
                            status, ctype.split(";")[0] or "no content type", e.response.text
                        ) from None
                    raise self._fail(req, counter[0], last) from None
                retry_after = retry_after_s(e.response.headers) if status == 429 else None
            except (self.openai.APITimeoutError, self.openai.APIConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            except self.openai.OpenAIError as e:  # e.g. a response that is not a chat completion
                raise self._fail(req, counter[0], f"{type(e).__name__}: {e}") from e
            if retry == ep.max_retries:
                break
            await _sleep(backoff_s(ep, retry, retry_after, self._jitter))
        raise self._fail(req, counter[0], last, retriable=True)  # 429 / 5xx / timeouts all the way

    async def call(
        self,
        req: ChatRequest,
        request_hash: str,
        resume: CallRecord | None = None,
        on_pending: Callable[[CallRecord], Any] | None = None,
    ) -> CallRecord:
        """Ask, re-ask while the answer is invalid, and return the final record.

        Re-asks use seed+1, seed+2, ...: a seeded server (ours, vLLM) would return the very same
        bad answer to the same request, and the derived seeds keep the whole sequence reproducible.
        Without a seed the request is re-sent as is (the server samples afresh anyway).
        `resume` (a journaled "pending" record) continues at its re-ask with its billed tokens;
        `on_pending(record)` is awaited with each invalid answer that will be re-asked, so paid
        tokens reach the journal before the next request can fail.
        """
        counter = [resume.attempts if resume else 0]
        billed_prompt = resume.prompt_tokens if resume else 0
        billed_completion = resume.completion_tokens if resume else 0
        start = resume.answers if resume else 0
        record: CallRecord | None = (
            resume.model_copy(update={"status": "invalid"}) if resume else None
        )
        for k in range(start, self.endpoint.max_invalid_retries + 1):
            seed = None if req.seed is None else req.seed + k
            completion, raw_text = await self._send(req, seed, request_hash, counter)
            if isinstance(completion, self.openai.APIStatusError):
                # deterministic per-request rejection: re-asking cannot help
                body = completion.body
                return CallRecord(
                    request_hash=request_hash,
                    key=req.key,
                    status="invalid",
                    reason=f"rejected:{error_code(completion)}",
                    attempts=counter[0],
                    model=self.endpoint.model,
                    raw_response=redact(json.dumps(body), self.api_key)
                    if body is not None
                    else None,
                    prompt_tokens=billed_prompt,
                    completion_tokens=billed_completion,
                    answers=k,  # earlier re-asks were paid
                )
            record = answer_record(
                req,
                request_hash,
                completion,
                raw_text,
                prior=(billed_prompt, billed_completion),
                attempts=counter[0],
                answers=k + 1,
                default_model=self.endpoint.model,
            )
            billed_prompt, billed_completion = record.prompt_tokens, record.completion_tokens
            reason = unusable_reason(completion, self.allow_truncated)
            if reason is None and self.validate is not None:
                reason = self.validate(record)
            if reason is None:
                return record
            record = record.model_copy(update={"status": "invalid", "reason": reason})
            log.info(
                "request %s: invalid answer (%s), attempt %d of %d",
                req.key,
                reason,
                k + 1,
                self.endpoint.max_invalid_retries + 1,
            )
            if on_pending is not None and k < self.endpoint.max_invalid_retries:
                await on_pending(record.model_copy(update={"status": "pending"}))
        assert record is not None
        return record


async def call_all_async(
    requests: Sequence[ChatRequest],
    endpoint: EndpointConfig,
    journal: Journal,
    namespace: str,
    validate: Callable[[CallRecord], str | None] | None,
    progress: Callable[[int, int], None] | None,
    allow_truncated: bool,
    lease: Lease | None = None,
) -> CallSummary:
    """`lease`: the running stage's (artifacts.lease), confirmed before each request is sent."""
    hashes = [r.request_hash(model=endpoint.model, namespace=namespace) for r in requests]
    done: dict[str, CallRecord] = {}
    journaled_all = await asyncio.to_thread(journal.load_all)
    journaled = without_pending(journaled_all)
    pending = {h: r for h, r in journaled_all.items() if r.status == "pending"}
    todo: dict[str, ChatRequest] = {}
    n_from_journal = 0
    for h, r in zip(hashes, requests):
        if h in journaled:
            done[h] = journaled[h]
            n_from_journal += 1
        else:
            todo.setdefault(h, r)  # an identical request twice in the list is sent once
    total = len(requests)
    multiplicity = Counter(hashes)
    finished = n_from_journal
    if progress is not None and n_from_journal:
        progress(finished, total)

    caller: SyncCaller | None = None
    if todo:
        if endpoint.base_url is None:
            raise ValueError(
                "endpoint.base_url is None: start the embedded server (or set a URL) before call_all"
            )
        caller = SyncCaller(
            endpoint, resolve_api_key(endpoint), validate, allow_truncated, lease=lease
        )
    sem = asyncio.Semaphore(endpoint.max_concurrency)
    errors: list[BaseException] = []

    async def on_pending(record: CallRecord) -> None:
        await asyncio.to_thread(journal.append, record)

    async def one(h: str, req: ChatRequest) -> None:
        nonlocal finished
        async with sem:
            if caller.failed.is_set():
                return
            try:
                record = await caller.call(req, h, pending.get(h), on_pending)
                # Journal before anything else can fail: this answer is paid for.
                await asyncio.to_thread(journal.append, record)
                done[h] = record
                finished += multiplicity[h]
                if progress is not None:
                    progress(finished, total)
            except _Aborted:
                return
            except Exception as e:
                # Stop starting new requests; those in flight finish and are journaled. Not
                # re-raised here: gather would then abandon (and lose) the in-flight answers.
                caller.failed.set()
                errors.append(e)

    try:
        if todo:
            await asyncio.gather(*(one(h, r) for h, r in todo.items()))
    finally:
        if caller is not None:
            await caller.client.close()
        journal.close()
    if errors:
        # a lost lease first: the run then waits for the new holder's artifact instead of failing
        first = next((e for e in errors if isinstance(e, LeaseLost)), errors[0])
        if len(errors) > 1 and isinstance(first, LLMCallError):
            log.error("%d requests failed; the first: %s", len(errors), first)
        raise first

    return summarize(
        hashes, done, endpoint, n_from_journal, len(todo), caller.http_requests if caller else 0
    )


def call_all_sync(
    requests: Sequence[ChatRequest],
    endpoint: EndpointConfig,
    journal: Journal,
    namespace: str,
    validate: Callable[[CallRecord], str | None] | None,
    progress: Callable[[int, int], None] | None,
    allow_truncated: bool,
) -> CallSummary:
    """`call_all_async` from synchronous code, whether or not this thread runs an event loop."""
    lease = held_lease()  # read in the caller's context: a thread of our own would not see it

    def run() -> CallSummary:
        return asyncio.run(
            call_all_async(
                requests, endpoint, journal, namespace, validate, progress, allow_truncated, lease
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # This thread already runs an event loop (an async Prefect task, a notebook): it cannot be
    # blocked with asyncio.run, so our loop runs in a thread of its own while this one waits.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgpo-llm-call") as pool:
        return pool.submit(run).result()
