"""Durable, concurrent, retrying client for the paid LLM calls (annotation and judging).

`call_all(requests, endpoint, journal_url=..., namespace=...)` sends chat requests to an
OpenAI-compatible endpoint and returns one `CallRecord` per request. Money is the constraint:

* **Never repay a finished call.** Each finished record (ok, or invalid after its re-asks) is
  written to a journal the moment it arrives, keyed by `request_hash` (namespace, model,
  messages, sampling parameters, key). A re-run, after a crash or a kill -9, loads the journal
  and sends only what is missing. Transport failures that exhaust their retries are not
  journaled, so a re-run retries them.
* **Never silently keep a bad answer.** Empty, truncated (finish_reason "length"), refused and
  content-filtered answers, and anything the caller's `validate` rejects, are re-asked up to
  `max_invalid_retries` times, then kept as status "invalid" with a reason, for the caller to
  drop and count.
* **Survive a flaky provider.** 429 (honouring Retry-After), 5xx, timeouts and connection errors
  are retried with exponential backoff and jitter; after `max_retries` a clear `LLMCallError`
  names the endpoint, the request key and the last error, never the API key.

* **Batch API mode** (`endpoint.mode = "batch"`, half price, answers within 24 h): what the
  journal lacks is written as JSONL, uploaded (`/v1/files`, purpose "batch") and submitted
  (`/v1/batches`); each submission is journaled at upload and again with its batch id, so a
  killed run resumes by polling the same batch; results are journaled as ordinary records
  (re-asks and expired or failed items go into a new batch, up to the same limits as sync mode).

The journal lives at `journal_url`, any fsspec URL. Local (a path or file://): `journal_url` is
one append-only JSONL file, one os.write per record on an O_APPEND fd, fsync'd, a torn last line
tolerated. Elsewhere (s3://...): `journal_url` is a prefix holding one small JSON object per
record, `{journal_url}/{request_hash}.json`; an object store's put is atomic, and appends are not
available there.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sgpo.config import EndpointConfig  # noqa: F401  (re-exported: callers build endpoints from here too)

log = logging.getLogger(__name__)
_sleep = asyncio.sleep  # module-level so tests can observe backoff delays without timing anything

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


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="The caller's stable row id, e.g. 'row-17/imp'")
    messages: list[dict[str, str]]
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int | None = None
    top_logprobs: int | None = Field(
        None, description="When set, ask logprobs=True, top_logprobs=N"
    )

    def request_hash(self, *, model: str, namespace: str) -> str:
        """The journal key: sha256 of everything that determines the answer, plus the row key."""
        payload = {
            "namespace": namespace,
            "model": model,
            "key": self.key,
            "messages": self.messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "top_logprobs": self.top_logprobs,
        }
        return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


class CallRecord(BaseModel):
    """One finished request. `prompt_tokens`/`completion_tokens` are billed totals over every
    answer received for it (rejected re-asks included), so costs add up; `text` and
    `top_logprobs` are the kept (last) answer's.

    Status "pending" (journal only, never returned): `answers` invalid answers were paid for and
    a re-ask is due. It keeps their tokens in the journal when the run dies or fails before the
    re-ask finishes, and a re-run continues with re-ask number `answers` instead of starting over."""

    request_hash: str
    key: str
    status: Literal["ok", "invalid", "pending"]
    reason: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    top_logprobs: list[dict] | None = (
        None  # per generated token: {"token", "logprob", "top_logprobs": [{"token","logprob"}]}
    )
    attempts: int = 0  # HTTP requests sent for this record, retries and re-asks included
    answers: int = 0  # answers received and billed (the kept one and the rejected re-asks)
    batch: bool = False  # answered through the Batch API (billed at the batch discount)
    model: str = ""  # the model that answered, as the response names it
    raw_response: str | None = None  # the last response's JSON body, for audit


class CallSummary(BaseModel):
    """Totals are over all distinct `records` (journaled ones included): the cost of the whole set.
    A request listed twice is sent, and paid, once, so its tokens count once."""

    records: list[CallRecord]  # in the order of the requests
    n_ok: int
    n_invalid: int
    n_from_journal: int  # requests answered from the journal: not sent, not paid again
    n_sent: int  # requests sent in this call
    n_http_requests: int = 0  # HTTP attempts made in this call (retries and re-asks included)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    invalid_reasons: dict[str, int]


class LLMCallError(RuntimeError):
    """A request that could not be completed. Names the endpoint and request key, never the API key."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        key: str | None = None,
        last_error: str | None = None,
        retriable: bool = False,
    ):
        super().__init__(message)
        self.endpoint, self.key, self.last_error = endpoint, key, last_error
        # True only when the provider was overloaded or unreachable (429, 5xx, timeouts) past our own
        # retries: a later task-level retry may succeed. 4xx, a missing key, non-OpenAI answers: never.
        self.retriable = retriable

    def __reduce__(
        self,
    ):  # keep the attributes across pickling (Prefect ships exceptions between processes)
        return (
            _rebuild_llm_call_error,
            (str(self), self.endpoint, self.key, self.last_error, self.retriable),
        )


class ExternalLLMNotConfigured(RuntimeError):
    """A stage that calls an LLM has no endpoint (base_url) to call."""


def cost_line(stage: str, result: CallSummary, endpoint: EndpointConfig) -> str:
    """One line for the stage log: calls, tokens and what they cost (journaled calls included)."""
    cost = (
        f"${result.cost_usd:.4f}"
        if result.cost_usd is not None
        else "unknown (set endpoint.price_per_1m_prompt_tokens and price_per_1m_completion_tokens)"
    )
    return (
        f"{stage}: {len(result.records)} calls to {endpoint.model} ({result.n_ok} ok, {result.n_invalid} invalid; "
        f"{result.n_sent} sent now in {result.n_http_requests} HTTP requests, {result.n_from_journal} from the "
        f"journal): {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens, cost {cost}"
    )


def _rebuild_llm_call_error(
    message: str,
    endpoint: str | None,
    key: str | None,
    last_error: str | None,
    retriable: bool = False,
) -> LLMCallError:
    return LLMCallError(
        message, endpoint=endpoint, key=key, last_error=last_error, retriable=retriable
    )


# --------------------------------------------------------------------------- journal


class Journal(Protocol):
    def load(self) -> dict[str, CallRecord]: ...
    def load_all(self) -> dict[str, CallRecord]: ...
    def append(self, record: CallRecord) -> None: ...
    def close(self) -> None: ...


def _parse_record(data: bytes | str, where: str, model: type[BaseModel] = CallRecord) -> Any:
    try:
        return model.model_validate_json(data)
    except ValidationError:
        log.warning(
            "journal %s: skipping an unreadable record (a write cut short by a crash?)", where
        )
        return None


def _finished(records: dict[str, Any]) -> dict[str, Any]:
    return {k: r for k, r in records.items() if getattr(r, "status", None) != "pending"}


class LocalJournal:
    """Append-only JSONL file. A crash can only tear the last line, which loading skips; before
    appending after such a crash we end that line, so the torn bytes never glue onto a new record."""

    def __init__(
        self, path: str | Path, *, model: type[BaseModel] = CallRecord, key: str = "request_hash"
    ):
        self.path = Path(path)
        self.model, self.key = model, key  # what a line holds and which field identifies it
        self._fd: int | None = None
        self._lock = threading.Lock()  # appends come from worker threads

    def load(self) -> dict[str, CallRecord]:
        """Finished records by request hash (a later line for the same hash wins)."""
        return _finished(self.load_all())

    def load_all(self) -> dict[str, Any]:
        """Every record, "pending" ones included."""
        if not self.path.exists():
            return {}
        out: dict[str, Any] = {}
        for line in self.path.read_bytes().split(b"\n"):
            if (
                line.strip()
                and (rec := _parse_record(line, str(self.path), self.model)) is not None
            ):
                out[getattr(rec, self.key)] = rec
        return out

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")
            self._fd = fd
        return self._fd

    def append(self, record: BaseModel) -> None:
        data = (record.model_dump_json() + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            view = memoryview(data)
            while view:  # one write in practice; loop only in case the kernel writes less
                view = view[os.write(fd, view) :]
            os.fsync(
                fd
            )  # survive a machine loss too, not just a killed process; cheap next to a paid call

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class ObjectStoreJournal:
    """One JSON object per record under a prefix (s3://bucket/run/journal/...)."""

    def __init__(
        self, fs: Any, root: str, *, model: type[BaseModel] = CallRecord, key: str = "request_hash"
    ):
        self.fs, self.root = fs, root.rstrip("/")
        self.model, self.key = model, key

    def load(self) -> dict[str, CallRecord]:
        """Finished records by request hash."""
        return _finished(self.load_all())

    def load_all(self) -> dict[str, Any]:
        """Every record, "pending" ones included (one object per hash: the latest write)."""
        try:
            self.fs.invalidate_cache(
                self.root
            )  # fsspec caches listings; another run may have written since
            paths = [p for p in self.fs.find(self.root) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        if not paths:
            return {}
        out: dict[str, Any] = {}
        for path, data in self.fs.cat(paths, on_error="omit").items():
            if (rec := _parse_record(data, path, self.model)) is not None:
                out[getattr(rec, self.key)] = rec
        return out

    def append(self, record: BaseModel) -> None:
        self.fs.pipe_file(
            f"{self.root}/{getattr(record, self.key)}.json",
            record.model_dump_json().encode("utf-8"),
        )

    def close(self) -> None:
        pass


def open_journal(journal_url: str, storage_options: dict | None = None) -> Journal:
    import fsspec

    fs, root = fsspec.core.url_to_fs(journal_url, **(storage_options or {}))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        if Path(root).is_dir():
            raise ValueError(
                f"journal_url {journal_url!r} is a directory; a local journal is one file (e.g. .../calls.jsonl)"
            )
        return LocalJournal(root)
    return ObjectStoreJournal(fs, root)


# --------------------------------------------------------------------------- calling


def _is_loopback(base_url: str) -> bool:
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_key(endpoint: EndpointConfig) -> str:
    key = os.environ.get(endpoint.api_key_env)
    if key:
        return key
    if endpoint.base_url and _is_loopback(endpoint.base_url):
        return "EMPTY"  # local servers ignore the key, but the openai client insists on one
    raise LLMCallError(
        f"environment variable {endpoint.api_key_env} is not set (needed for {endpoint.base_url})",
        endpoint=endpoint.base_url,
    )


def _scrub(text: str, api_key: str) -> str:
    # Provider errors sometimes echo (part of) the key, e.g. "Incorrect API key provided: sk-ab***yz".
    if api_key and api_key != "EMPTY":
        text = text.replace(api_key, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-*]{4,}", "sk-***", text)


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


def _not_a_chat_completion(parsed: Any, content_type: str | None) -> str | None:
    """Why a 2xx response is not a chat completion (None if it is one).

    The openai client returns the body as a plain str when the server does not say JSON (an HTML
    page), and builds the model without validation when it does, so both are checked here."""
    ctype = (content_type or "no content type").split(";")[0].strip() or "no content type"
    if isinstance(parsed, (str, bytes)) or "json" not in ctype:
        return ctype
    if not isinstance(getattr(parsed, "choices", None), list):
        return f"{ctype} without a 'choices' list"
    return None


def _request_body(model: str, req: ChatRequest, seed: int | None) -> dict[str, Any]:
    """The chat-completions body of one ask (the same in sync calls and in batch input lines)."""
    body: dict[str, Any] = dict(
        model=model,
        messages=req.messages,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
    )
    if seed is not None:
        body["seed"] = seed
    if req.top_logprobs is not None:
        body.update(logprobs=True, top_logprobs=req.top_logprobs)
    return body


def _builtin_reason(completion: Any, allow_truncated: bool) -> str | None:
    """Why an answer is unusable whatever the caller wants (None: usable)."""
    choice = completion.choices[0] if completion.choices else None
    if choice is None:
        return "no_choices"
    if getattr(choice.message, "refusal", None):
        return "refused"
    if choice.finish_reason == "content_filter":
        return "content_filter"
    if not (choice.message.content or "").strip():
        return "empty"
    if choice.finish_reason == "length" and not allow_truncated:
        return "truncated"
    return None


def _answer_record(
    req: ChatRequest,
    request_hash: str,
    completion: Any,
    raw_text: str | None,
    *,
    prior: tuple[int, int],
    attempts: int,
    answers: int,
    default_model: str,
    batch: bool = False,
) -> CallRecord:
    """The "ok" record of one answer; `prior` = (prompt, completion) tokens billed for earlier answers."""
    usage = completion.usage
    choice = completion.choices[0] if completion.choices else None
    top = None
    if choice is not None and choice.logprobs is not None and choice.logprobs.content is not None:
        top = [
            {
                "token": t.token,
                "logprob": t.logprob,
                "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in t.top_logprobs],
            }
            for t in choice.logprobs.content
        ]
    return CallRecord(
        request_hash=request_hash,
        key=req.key,
        status="ok",
        reason=None,
        text=choice.message.content if choice else None,
        finish_reason=choice.finish_reason if choice else None,
        prompt_tokens=prior[0] + (usage.prompt_tokens if usage else 0),
        completion_tokens=prior[1] + (usage.completion_tokens if usage else 0),
        top_logprobs=top,
        attempts=attempts,
        answers=answers,
        model=completion.model or default_model,
        raw_response=raw_text,
        batch=batch,
    )


class _Aborted(Exception):
    """Another request failed fatally; this one stops without sending more."""


class _Caller:
    def __init__(
        self,
        endpoint: EndpointConfig,
        api_key: str,
        validate: Callable[[CallRecord], str | None] | None,
        allow_truncated: bool = False,
    ):
        import openai

        self.openai = openai
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
        last = _scrub(last, self.api_key)
        return LLMCallError(
            f"LLM request {req.key!r} to {self.endpoint.base_url} (model {self.endpoint.model}) failed after "
            f"{attempts} attempt(s): {last}",
            endpoint=self.endpoint.base_url,
            key=req.key,
            retriable=retriable,
            last_error=last,
        )

    def _not_openai(self, status: int, problem: str, body: str) -> LLMCallError:
        snippet = _scrub(" ".join(body[:120].split()), self.api_key)
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
        kwargs = _request_body(ep.model, req, seed)
        last = "no attempt made"
        for retry in range(ep.max_retries + 1):
            if self.failed.is_set():
                raise _Aborted()
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
                    problem := _not_a_chat_completion(completion, raw.headers.get("content-type"))
                ) is not None:
                    # a web page or another API at this URL: re-sending cannot help, and it is no answer
                    raise self._not_openai(raw.status_code, problem, raw.text)
                return completion, raw.text
            except self.openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}: {e.message}"
                code = _error_code(e)
                if status == 400 and code in _PER_REQUEST_400_CODES:
                    return e, None
                if status not in (408, 409, 429) and status < 500:
                    ctype = e.response.headers.get("content-type") or ""
                    if (
                        "json" not in ctype
                    ):  # e.g. a web server's 404 page: wrong URL, not a rejected request
                        raise self._not_openai(
                            status, ctype.split(";")[0] or "no content type", e.response.text
                        ) from None
                    raise self._fail(req, counter[0], last) from None
                retry_after = _retry_after_s(e.response.headers) if status == 429 else None
            except (self.openai.APITimeoutError, self.openai.APIConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            except self.openai.OpenAIError as e:  # e.g. a response that is not a chat completion
                raise self._fail(req, counter[0], f"{type(e).__name__}: {e}") from e
            if retry == ep.max_retries:
                break
            backoff = min(ep.backoff_max_s, ep.backoff_base_s * 2**retry) * self._jitter.uniform(
                0.5, 1.0
            )
            # The server's Retry-After is a floor (retrying sooner only earns another 429), capped
            # so that a far-away quota reset fails the run visibly instead of stalling it.
            delay = (
                max(backoff, min(retry_after, _MAX_RETRY_AFTER_S))
                if retry_after is not None
                else backoff
            )
            await _sleep(delay)
        raise self._fail(req, counter[0], last, retriable=True)  # 429 / 5xx / timeouts all the way

    def _builtin_reason(self, completion: Any) -> str | None:
        return _builtin_reason(completion, self.allow_truncated)

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
                    reason=f"rejected:{_error_code(completion)}",
                    attempts=counter[0],
                    model=self.endpoint.model,
                    raw_response=_scrub(json.dumps(body), self.api_key)
                    if body is not None
                    else None,
                    prompt_tokens=billed_prompt,
                    completion_tokens=billed_completion,
                    answers=k,  # earlier re-asks were paid
                )
            record = _answer_record(
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
            reason = self._builtin_reason(completion)
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


async def _call_all_async(
    requests: Sequence[ChatRequest],
    endpoint: EndpointConfig,
    journal: Journal,
    namespace: str,
    validate: Callable[[CallRecord], str | None] | None,
    progress: Callable[[int, int], None] | None,
    allow_truncated: bool,
) -> CallSummary:
    hashes = [r.request_hash(model=endpoint.model, namespace=namespace) for r in requests]
    done: dict[str, CallRecord] = {}
    journaled_all = await asyncio.to_thread(journal.load_all)
    journaled = _finished(journaled_all)
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

    caller: _Caller | None = None
    if todo:
        if endpoint.base_url is None:
            raise ValueError(
                "endpoint.base_url is None: start the embedded server (or set a URL) before call_all"
            )
        caller = _Caller(endpoint, _api_key(endpoint), validate, allow_truncated)
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
        first = errors[0]
        if len(errors) > 1 and isinstance(first, LLMCallError):
            log.error("%d requests failed; the first: %s", len(errors), first)
        raise first

    return _summary(
        hashes, done, endpoint, n_from_journal, len(todo), caller.http_requests if caller else 0
    )


def _summary(
    hashes: list[str],
    done: dict[str, CallRecord],
    endpoint: EndpointConfig,
    n_from_journal: int,
    n_sent: int,
    n_http: int,
) -> CallSummary:
    records = [done[h] for h in hashes]
    reasons = Counter(r.reason or "unknown" for r in records if r.status == "invalid")
    paid = [
        done[h] for h in dict.fromkeys(hashes)
    ]  # each distinct request once: that is what was paid
    prompt_tokens = sum(r.prompt_tokens for r in paid)
    completion_tokens = sum(r.completion_tokens for r in paid)
    cost = None
    if (
        endpoint.price_per_1m_prompt_tokens is not None
        and endpoint.price_per_1m_completion_tokens is not None
    ):
        cost = (
            sum(
                (
                    r.prompt_tokens * endpoint.price_per_1m_prompt_tokens
                    + r.completion_tokens * endpoint.price_per_1m_completion_tokens
                )
                * (endpoint.batch_discount if r.batch else 1)
                for r in paid
            )
            / 1e6
        )
    return CallSummary(
        records=records,
        n_ok=sum(r.status == "ok" for r in records),
        n_invalid=sum(r.status == "invalid" for r in records),
        n_from_journal=n_from_journal,
        n_sent=n_sent,
        n_http_requests=n_http,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        invalid_reasons=dict(reasons),
    )


# --------------------------------------------------------------------------- Batch API

_BATCH_LIVE = {"validating", "in_progress", "finalizing", "cancelling"}
_sleep_sync = time.sleep  # module-level, like _sleep, so tests can shorten the polling waits


class BatchRecord(BaseModel):
    """One batch submission, journaled beside the call journal (`<journal>.batches...`).

    Written when the input file is uploaded (before the batch exists), again with the batch id as
    soon as it is created, and once more when its results are journaled ("done"). A run that
    dies in between resumes by polling the same batch (found by input file id when the id itself
    was not journaled yet), so a batch is never created, nor paid, twice."""

    model_config = ConfigDict(extra="forbid")

    batch_key: str
    input_file_id: str
    batch_id: str | None = None
    items: dict[str, int]  # request hash -> the re-ask number (seed offset) asked in this batch
    state: Literal["uploaded", "submitted", "done"]
    created_at: float


def open_batch_journal(journal_url: str, storage_options: dict | None = None) -> Journal:
    """The batch submissions of the journal at `journal_url` (a sibling file or prefix, same folder)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(journal_url, **(storage_options or {}))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return LocalJournal(f"{root}.batches.jsonl", model=BatchRecord, key="batch_key")
    return ObjectStoreJournal(fs, f"{root.rstrip('/')}.batches", model=BatchRecord, key="batch_key")


def _batch_item_error(resp: dict[str, Any]) -> tuple[str | None, str]:
    err = (resp.get("body") or {}).get("error") if isinstance(resp.get("body"), dict) else None
    if isinstance(err, dict):
        return (err.get("code") if isinstance(err.get("code"), str) else None), str(
            err.get("message") or ""
        )
    return None, ""


def _call_all_batch(
    requests: Sequence[ChatRequest],
    endpoint: EndpointConfig,
    journal: Journal,
    batches: Journal,
    namespace: str,
    validate: Callable[[CallRecord], str | None] | None,
    progress: Callable[[int, int], None] | None,
    allow_truncated: bool,
) -> CallSummary:
    """call_all through the Batch API: what the journal lacks goes into batches; results are journaled
    as ordinary records, so sync and batch runs share one journal and never pay for a call twice."""
    import openai
    from openai.types.chat import ChatCompletion

    hashes = [r.request_hash(model=endpoint.model, namespace=namespace) for r in requests]
    journaled_all = journal.load_all()
    done = _finished(journaled_all)
    carried = {
        h: r for h, r in journaled_all.items() if r.status == "pending"
    }  # paid re-asks so far
    todo: dict[str, ChatRequest] = {}
    for h, r in zip(hashes, requests):
        if h not in done:
            todo.setdefault(h, r)
    n_from_journal = sum(h in done for h in hashes)
    multiplicity, total = Counter(hashes), len(requests)
    finished = n_from_journal
    if not todo:
        journal.close()
        batches.close()
        return _summary(hashes, done, endpoint, n_from_journal, 0, 0)
    if endpoint.base_url is None:
        raise ValueError(
            "endpoint.base_url is None: start the embedded server (or set a URL) before call_all"
        )
    api_key = _api_key(endpoint)
    base_url = endpoint.base_url
    # the client's own retries (backoff, Retry-After) cover the few management requests
    client = openai.OpenAI(
        base_url=base_url,
        api_key=api_key,
        timeout=endpoint.timeout_s,
        max_retries=endpoint.max_retries,
    )
    n_http = 0
    asked = {
        h: carried[h].answers if h in carried else 0 for h in todo
    }  # the re-ask number due next
    submissions: Counter = Counter()  # times each request was put in a batch by this run
    failures: Counter = Counter()
    last_failure: dict[str, str] = {}
    in_flight: dict[str, BatchRecord] = {}
    covered: set[str] = set()  # requests in a batch that is still running

    def api(what: str, fn: Callable, *a: Any, **kw: Any) -> Any:
        nonlocal n_http
        n_http += 1
        try:
            return fn(*a, **kw)
        except openai.APIStatusError as e:
            hint = (
                " (does this endpoint offer the Batch API? otherwise use mode 'sync')"
                if e.status_code in (404, 405)
                else ""
            )
            last = _scrub(f"HTTP {e.status_code}: {e.message}", api_key)
        except openai.OpenAIError as e:
            hint, last = "", _scrub(f"{type(e).__name__}: {e}", api_key)
        raise LLMCallError(
            f"Batch API {what} at {base_url} failed: {last}{hint}",
            endpoint=base_url,
            last_error=last,
        )

    def finish(h: str, record: CallRecord) -> None:
        nonlocal finished
        journal.append(record)  # before anything else can fail: this answer is paid for
        done[h] = record
        finished += multiplicity[h]
        if progress is not None:
            progress(finished, total)

    def submit(chunk: list[str]) -> None:
        lines = []
        for h in chunk:
            req = todo[h]
            seed = (
                None if req.seed is None else req.seed + asked[h]
            )  # re-asks use seed+1, ... as in sync mode
            body = _request_body(endpoint.model, req, seed)
            lines.append(
                {"custom_id": h, "method": "POST", "url": "/v1/chat/completions", "body": body}
            )
        data = "".join(_canonical(x) + "\n" for x in lines).encode("utf-8")
        f = api(
            "file upload",
            client.files.create,
            file=("sgpo-batch.jsonl", data, "application/jsonl"),
            purpose="batch",
        )
        rec = BatchRecord(
            batch_key=hashlib.sha256(f.id.encode()).hexdigest()[:32],
            input_file_id=f.id,
            items={h: asked[h] for h in chunk},
            state="uploaded",
            created_at=time.time(),
        )
        batches.append(
            rec
        )  # journaled before the batch exists: a kill from here on finds it by file id
        b = api(
            "batch create",
            client.batches.create,
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"sgpo_namespace": namespace[:512]},
        )
        rec = rec.model_copy(update={"batch_id": b.id, "state": "submitted"})
        batches.append(rec)
        submissions.update(chunk)
        in_flight[b.id] = rec
        covered.update(chunk)
        log.info("batch %s: %d requests submitted to %s", b.id, len(chunk), base_url)

    def process(rec: BatchRecord, b: Any) -> None:
        if b.status == "failed":  # the whole input was refused: a bug or a configuration problem
            errs = getattr(b.errors, "data", None) or []
            why = "; ".join(f"line {e.line}: {e.message}" for e in errs) or "no reason given"
            batches.append(rec.model_copy(update={"state": "done"}))
            raise LLMCallError(
                f"batch {b.id} at {base_url} failed validation: {why}",
                endpoint=base_url,
                last_error=why,
            )
        results: dict[str, dict[str, Any]] = {}
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                for line in api("file download", client.files.content, fid).text.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        results[item.get("custom_id")] = item
        given_up = []
        for h, k in rec.items.items():
            if h in done or h not in todo or asked[h] != k:
                continue  # answered already (a run that died after journaling it), or a stale item
            req, prev = todo[h], carried.get(h)
            prior = (prev.prompt_tokens, prev.completion_tokens) if prev else (0, 0)
            attempts = (prev.attempts if prev else 0) + submissions[h]
            item = results.get(h) or {}
            resp = item.get("response") or {}
            status = resp.get("status_code")
            if status == 200:
                try:
                    completion = ChatCompletion.model_validate(resp.get("body"))
                except ValidationError:
                    raise LLMCallError(
                        f"batch {b.id} at {base_url}: the answer to {req.key!r} is not a chat "
                        "completion",
                        endpoint=base_url,
                        key=req.key,
                    ) from None
                record = _answer_record(
                    req,
                    h,
                    completion,
                    json.dumps(resp.get("body")),
                    prior=prior,
                    attempts=attempts,
                    answers=k + 1,
                    default_model=endpoint.model,
                    batch=True,
                )
                reason = _builtin_reason(completion, allow_truncated)
                if reason is None and validate is not None:
                    reason = validate(record)
                if reason is None:
                    finish(h, record)
                    continue
                record = record.model_copy(update={"status": "invalid", "reason": reason})
                if (
                    k < endpoint.max_invalid_retries
                ):  # re-ask in the next batch; keep the paid tokens
                    carried[h] = record.model_copy(update={"status": "pending"})
                    journal.append(carried[h])
                    asked[h] = k + 1
                    covered.discard(h)
                else:
                    finish(h, record)
                continue
            code, message = _batch_item_error(resp)
            if status == 400 and code in _PER_REQUEST_400_CODES:
                finish(
                    h,
                    CallRecord(
                        request_hash=h,
                        key=req.key,
                        status="invalid",
                        reason=f"rejected:{code}",
                        attempts=attempts,
                        answers=k,
                        model=endpoint.model,
                        prompt_tokens=prior[0],
                        completion_tokens=prior[1],
                        batch=True,
                        raw_response=_scrub(json.dumps(resp.get("body")), api_key),
                    ),
                )
                continue
            if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                last = _scrub(f"HTTP {status}: {message}", api_key)
                batches.append(rec.model_copy(update={"state": "done"}))
                raise LLMCallError(
                    f"LLM request {req.key!r} in batch {b.id} at {base_url} was rejected: {last}",
                    endpoint=base_url,
                    key=req.key,
                    last_error=last,
                )
            # expired, failed at the provider (5xx, 429), or absent from the output: submit it again
            failures[h] += 1
            err = item.get("error") if isinstance(item.get("error"), dict) else {}
            last_failure[h] = err.get("code") or (
                f"HTTP {status}" if status else f"no result (batch {b.status})"
            )
            if failures[h] > endpoint.max_retries:
                given_up.append(h)
            else:
                covered.discard(h)
        batches.append(rec.model_copy(update={"state": "done"}))
        if given_up:
            names = ", ".join(f"{todo[h].key!r} ({last_failure[h]})" for h in given_up[:10])
            more = f" and {len(given_up) - 10} more" if len(given_up) > 10 else ""
            raise LLMCallError(
                f"{len(given_up)} request(s) got no answer in {endpoint.max_retries + 1} batch submission(s) to "
                f"{base_url}: {names}{more}",
                endpoint=base_url,
                key=todo[given_up[0]].key,
                last_error=last_failure[given_up[0]],
            )

    try:
        # 1. batches a killed run left running: poll them instead of submitting their requests again
        listed: list[Any] | None = None
        for rec in batches.load_all().values():
            if rec.state == "done":
                continue
            if not any(h in todo and h not in done and asked[h] == k for h, k in rec.items.items()):
                batches.append(rec.model_copy(update={"state": "done"}))
                continue
            if (
                rec.batch_id is None
            ):  # died between upload and journaling the batch id: was it created?
                if listed is None:
                    listed = list(
                        itertools.islice(api("batch list", client.batches.list, limit=100), 1000)
                    )
                found = next((x for x in listed if x.input_file_id == rec.input_file_id), None)
                if found is None:
                    batches.append(rec.model_copy(update={"state": "done"}))
                    continue
                rec = rec.model_copy(update={"batch_id": found.id, "state": "submitted"})
                batches.append(rec)
            in_flight[rec.batch_id] = rec
            covered.update(h for h, k in rec.items.items() if h in todo and asked[h] == k)
            log.info("batch %s: resuming (submitted by an earlier run)", rec.batch_id)
        # 2. submit what is not covered, poll, journal results, re-submit failed items
        delay = endpoint.batch_poll_s
        while True:
            waiting = [h for h in todo if h not in done and h not in covered]
            for i in range(0, len(waiting), endpoint.batch_max_requests):
                submit(waiting[i : i + endpoint.batch_max_requests])
            if not in_flight:
                break
            _sleep_sync(delay)
            ended = False
            for bid, rec in list(in_flight.items()):
                b = api("batch status", client.batches.retrieve, bid)
                if b.status in _BATCH_LIVE:
                    continue
                del in_flight[bid]
                ended = True
                for h in rec.items:
                    covered.discard(h)
                process(rec, b)
            delay = endpoint.batch_poll_s if ended else min(delay * 2, endpoint.batch_poll_max_s)
    finally:
        client.close()
        journal.close()
        batches.close()
    return _summary(hashes, done, endpoint, n_from_journal, len(todo), n_http)


def call_all(
    requests: Sequence[ChatRequest],
    endpoint: EndpointConfig,
    *,
    journal_url: str,
    namespace: str,
    storage_options: dict | None = None,
    validate: Callable[[CallRecord], str | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    allow_truncated: bool = False,
) -> CallSummary:
    """Send every request not already in the journal; return all records in request order.

    `namespace` separates journals' meanings (e.g. "annotate/improve/v1"): the same request under
    another namespace is a different call. `validate(record)` returns a reason to reject an
    answer (refusal, unparseable verdict) or None; its exceptions are bugs and propagate.
    `allow_truncated` accepts finish_reason "length" (a judge asking for max_tokens=1 wants it).
    Validation settings are not part of the request hash: journaled verdicts are reused as they
    are, so change the namespace when changing them.
    With `endpoint.mode == "batch"` the calls go through the Batch API (see the module docstring);
    the records are the same, marked `batch=True` and costed at `endpoint.batch_discount`.
    Raises LLMCallError when a request exhausts its retries (finished answers stay journaled).
    """
    journal = open_journal(journal_url, storage_options)
    if endpoint.mode == "batch":
        # blocking polls, no event loop: fine from any thread, a running loop's included
        return _call_all_batch(
            requests,
            endpoint,
            journal,
            open_batch_journal(journal_url, storage_options),
            namespace,
            validate,
            progress,
            allow_truncated,
        )

    def run() -> CallSummary:
        return asyncio.run(
            _call_all_async(
                requests, endpoint, journal, namespace, validate, progress, allow_truncated
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
