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

log = logging.getLogger(__name__)
_sleep = asyncio.sleep  # module-level so tests can observe backoff delays without timing anything

# Same marker as sgpo.config.runtime_field (not imported: sgpo.config imports this module).
# Fields so marked change how calls are made, not what they return, so they stay out of cache keys.
NOT_IN_CACHE_KEY = "not_in_cache_key"

_MAX_RETRY_AFTER_S = 600.0

# 400s that are a property of one request, not of the configuration: re-sending it cannot help,
# failing the whole batch for one over-long or flagged prompt would be worse, so the row is kept
# as invalid with this reason. Every other 4xx (auth, unknown model, bad parameter) is fatal.
_PER_REQUEST_400_CODES = {"context_length_exceeded", "content_filter", "invalid_prompt", "content_policy_violation"}


def _runtime(default: Any, description: str, **kw: Any) -> Any:
    return Field(default, description=description, json_schema_extra={NOT_IN_CACHE_KEY: True}, **kw)


class EndpointConfig(BaseModel):
    """An OpenAI-compatible endpoint and how hard to try it. The API key itself is never stored."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = _runtime(None, "OpenAI-compatible base URL; None = the pipeline starts the embedded server")
    model: str = Field("gpt-4-turbo", description="Model id sent with every request")
    api_key_env: str = _runtime(
        "OPENAI_API_KEY", "NAME of the env var holding the key; unset is allowed only for a loopback base_url"
    )
    timeout_s: float = _runtime(60.0, "Per-attempt HTTP timeout", gt=0)
    max_concurrency: int = _runtime(8, "Requests in flight at once", ge=1)
    max_retries: int = _runtime(6, "Retries per request for transport errors, 429 and 5xx", ge=0)
    max_invalid_retries: int = Field(
        2, ge=0, description="Re-asks for empty/truncated/refused/unparseable answers before keeping it as invalid"
    )
    backoff_base_s: float = _runtime(1.0, "First retry delay; doubles each retry, with jitter", ge=0)
    backoff_max_s: float = _runtime(60.0, "Cap on one retry delay", ge=0)
    price_per_1m_prompt_tokens: float | None = _runtime(None, "USD per 1M prompt tokens, for cost reports", ge=0)
    price_per_1m_completion_tokens: float | None = _runtime(None, "USD per 1M completion tokens", ge=0)


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
    top_logprobs: int | None = Field(None, description="When set, ask logprobs=True, top_logprobs=N")

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
        self, message: str, *, endpoint: str | None = None, key: str | None = None, last_error: str | None = None
    ):
        super().__init__(message)
        self.endpoint, self.key, self.last_error = endpoint, key, last_error

    def __reduce__(self):  # keep the attributes across pickling (Prefect ships exceptions between processes)
        return (_rebuild_llm_call_error, (str(self), self.endpoint, self.key, self.last_error))


def _rebuild_llm_call_error(
    message: str, endpoint: str | None, key: str | None, last_error: str | None
) -> LLMCallError:
    return LLMCallError(message, endpoint=endpoint, key=key, last_error=last_error)


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
        log.warning("journal %s: skipping an unreadable record (a write cut short by a crash?)", where)
        return None


def _finished(records: dict[str, Any]) -> dict[str, Any]:
    return {k: r for k, r in records.items() if getattr(r, "status", None) != "pending"}


class LocalJournal:
    """Append-only JSONL file. A crash can only tear the last line, which loading skips; before
    appending after such a crash we end that line, so the torn bytes never glue onto a new record."""

    def __init__(self, path: str | Path, *, model: type[BaseModel] = CallRecord, key: str = "request_hash"):
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
            if line.strip() and (rec := _parse_record(line, str(self.path), self.model)) is not None:
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
            os.fsync(fd)  # survive a machine loss too, not just a killed process; cheap next to a paid call

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class ObjectStoreJournal:
    """One JSON object per record under a prefix (s3://bucket/run/journal/...)."""

    def __init__(self, fs: Any, root: str, *, model: type[BaseModel] = CallRecord, key: str = "request_hash"):
        self.fs, self.root = fs, root.rstrip("/")
        self.model, self.key = model, key

    def load(self) -> dict[str, CallRecord]:
        """Finished records by request hash."""
        return _finished(self.load_all())

    def load_all(self) -> dict[str, Any]:
        """Every record, "pending" ones included (one object per hash: the latest write)."""
        try:
            self.fs.invalidate_cache(self.root)  # fsspec caches listings; another run may have written since
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
        self.fs.pipe_file(f"{self.root}/{getattr(record, self.key)}.json", record.model_dump_json().encode("utf-8"))

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

    def _fail(self, req: ChatRequest, attempts: int, last: str) -> LLMCallError:
        last = _scrub(last, self.api_key)
        return LLMCallError(
            f"LLM request {req.key!r} to {self.endpoint.base_url} (model {self.endpoint.model}) failed after "
            f"{attempts} attempt(s): {last}",
            endpoint=self.endpoint.base_url,
            key=req.key,
            last_error=last,
        )

    def _not_openai(self, status: int, problem: str, body: str) -> LLMCallError:
        snippet = _scrub(" ".join(body[:120].split()), self.api_key)
        msg = (
            f"the endpoint at {self.endpoint.base_url} did not answer as an OpenAI-compatible API (got {problem}, "
            f"HTTP {status}: {snippet!r}); check base_url (OpenAI-compatible servers usually end in /v1)"
        )
        return LLMCallError(msg, endpoint=self.endpoint.base_url, last_error=f"not an OpenAI answer: {problem}")

    async def _send(self, req: ChatRequest, seed: int | None, request_hash: str, counter: list[int]):
        """One answer, retrying transport errors. Returns (completion, raw_json) or a per-request 400 error."""
        ep = self.endpoint
        kwargs: dict[str, Any] = dict(
            model=ep.model,
            messages=req.messages,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
        )
        if seed is not None:
            kwargs["seed"] = seed
        if req.top_logprobs is not None:
            kwargs.update(logprobs=True, top_logprobs=req.top_logprobs)
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
                if (problem := _not_a_chat_completion(completion, raw.headers.get("content-type"))) is not None:
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
                    if "json" not in ctype:  # e.g. a web server's 404 page: wrong URL, not a rejected request
                        raise self._not_openai(status, ctype.split(";")[0] or "no content type", e.response.text) from None
                    raise self._fail(req, counter[0], last) from None
                retry_after = _retry_after_s(e.response.headers) if status == 429 else None
            except (self.openai.APITimeoutError, self.openai.APIConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            except self.openai.OpenAIError as e:  # e.g. a response that is not a chat completion
                raise self._fail(req, counter[0], f"{type(e).__name__}: {e}") from e
            if retry == ep.max_retries:
                break
            backoff = min(ep.backoff_max_s, ep.backoff_base_s * 2**retry) * self._jitter.uniform(0.5, 1.0)
            # The server's Retry-After is a floor (retrying sooner only earns another 429), capped
            # so that a far-away quota reset fails the run visibly instead of stalling it.
            delay = max(backoff, min(retry_after, _MAX_RETRY_AFTER_S)) if retry_after is not None else backoff
            await _sleep(delay)
        raise self._fail(req, counter[0], last)

    def _builtin_reason(self, completion: Any) -> str | None:
        choice = completion.choices[0] if completion.choices else None
        if choice is None:
            return "no_choices"
        if getattr(choice.message, "refusal", None):
            return "refused"
        if choice.finish_reason == "content_filter":
            return "content_filter"
        if not (choice.message.content or "").strip():
            return "empty"
        if choice.finish_reason == "length" and not self.allow_truncated:
            return "truncated"
        return None

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
        record: CallRecord | None = resume.model_copy(update={"status": "invalid"}) if resume else None
        for k in range(start, self.endpoint.max_invalid_retries + 1):
            seed = None if req.seed is None else req.seed + k
            completion, raw_text = await self._send(req, seed, request_hash, counter)
            if isinstance(completion, self.openai.APIStatusError):
                # deterministic per-request rejection: re-asking cannot help
                body = completion.body
                return CallRecord(
                    request_hash=request_hash, key=req.key, status="invalid",
                    reason=f"rejected:{_error_code(completion)}", attempts=counter[0], model=self.endpoint.model,
                    raw_response=_scrub(json.dumps(body), self.api_key) if body is not None else None,
                    prompt_tokens=billed_prompt, completion_tokens=billed_completion, answers=k,  # earlier re-asks were paid
                )  # fmt: skip
            usage = completion.usage
            billed_prompt += usage.prompt_tokens if usage else 0
            billed_completion += usage.completion_tokens if usage else 0
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
            record = CallRecord(
                request_hash=request_hash, key=req.key, status="ok", reason=None,
                text=choice.message.content if choice else None,
                finish_reason=choice.finish_reason if choice else None,
                prompt_tokens=billed_prompt, completion_tokens=billed_completion, top_logprobs=top,
                attempts=counter[0], answers=k + 1, model=completion.model or self.endpoint.model,
                raw_response=raw_text,
            )  # fmt: skip
            reason = self._builtin_reason(completion)
            if reason is None and self.validate is not None:
                reason = self.validate(record)
            if reason is None:
                return record
            record = record.model_copy(update={"status": "invalid", "reason": reason})
            log.info("request %s: invalid answer (%s), attempt %d of %d", req.key, reason, k + 1,
                     self.endpoint.max_invalid_retries + 1)  # fmt: skip
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
            raise ValueError("endpoint.base_url is None: start the embedded server (or set a URL) before call_all")
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

    records = [done[h] for h in hashes]
    reasons = Counter(r.reason or "unknown" for r in records if r.status == "invalid")
    paid = [done[h] for h in dict.fromkeys(hashes)]  # each distinct request once: that is what was paid
    prompt_tokens = sum(r.prompt_tokens for r in paid)
    completion_tokens = sum(r.completion_tokens for r in paid)
    cost = None
    if endpoint.price_per_1m_prompt_tokens is not None and endpoint.price_per_1m_completion_tokens is not None:
        cost = (
            prompt_tokens * endpoint.price_per_1m_prompt_tokens
            + completion_tokens * endpoint.price_per_1m_completion_tokens
        ) / 1e6
    return CallSummary(
        records=records,
        n_ok=sum(r.status == "ok" for r in records),
        n_invalid=sum(r.status == "invalid" for r in records),
        n_from_journal=n_from_journal,
        n_sent=len(todo),
        n_http_requests=caller.http_requests if caller else 0,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        invalid_reasons=dict(reasons),
    )


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
    Raises LLMCallError when a request exhausts its retries (finished answers stay journaled).
    """
    journal = open_journal(journal_url, storage_options)

    def run() -> CallSummary:
        return asyncio.run(_call_all_async(requests, endpoint, journal, namespace, validate, progress, allow_truncated))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # This thread already runs an event loop (an async Prefect task, a notebook): it cannot be
    # blocked with asyncio.run, so our loop runs in a thread of its own while this one waits.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgpo-llm-call") as pool:
        return pool.submit(run).result()
