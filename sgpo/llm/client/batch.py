"""Batch API mode: what the journal lacks goes into batches, polled until they end."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from sgpo.config.pipeline import EndpointConfig
from sgpo.llm.client.completions import _answer_record, _builtin_reason, _request_body
from sgpo.llm.client.cost import _summary
from sgpo.llm.client.credentials import _api_key, _scrub
from sgpo.llm.client.errors import LLMCallError
from sgpo.llm.client.journal import Journal, LocalJournal, ObjectStoreJournal, _finished
from sgpo.llm.client.records import CallRecord, CallSummary, ChatRequest, _canonical
from sgpo.llm.client.retry import _PER_REQUEST_400_CODES

log = logging.getLogger(__name__)


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
