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

from artifacts.lease import held_lease
from sgpo.config import EndpointConfig
from sgpo.llm.client.completions import answer_record, request_body, unusable_reason
from sgpo.llm.client.cost import summarize
from sgpo.llm.client.credentials import redact, resolve_api_key
from sgpo.llm.client.errors import LLMCallError
from sgpo.llm.client.journal import (
    Journal,
    LocalJournal,
    ObjectStoreJournal,
    locate,
    without_pending,
)
from sgpo.llm.client.records import CallRecord, CallSummary, ChatRequest, canonical_json
from sgpo.llm.client.retry import RETRIABLE_4XX, is_per_request_rejection

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
    fs, root, local = locate(journal_url, storage_options)
    if local:
        return LocalJournal(f"{root}.batches.jsonl", model=BatchRecord, key="batch_key")
    return ObjectStoreJournal(fs, f"{root.rstrip('/')}.batches", model=BatchRecord, key="batch_key")


def _batch_item_error(resp: dict[str, Any]) -> tuple[str | None, str]:
    """(error code, message) of a failed batch item's response body."""
    err = (resp.get("body") or {}).get("error") if isinstance(resp.get("body"), dict) else None
    if isinstance(err, dict):
        return (err.get("code") if isinstance(err.get("code"), str) else None), str(
            err.get("message") or ""
        )
    return None, ""


def call_all_batch(
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
    hashes = [r.request_hash(model=endpoint.model, namespace=namespace) for r in requests]
    journaled = journal.load_all()
    done = without_pending(journaled)
    todo: dict[str, ChatRequest] = {}
    for h, r in zip(hashes, requests):
        if h not in done:
            todo.setdefault(h, r)
    n_from_journal = sum(h in done for h in hashes)
    if not todo:
        journal.close()
        batches.close()
        return summarize(hashes, done, endpoint, n_from_journal, 0, 0)
    if endpoint.base_url is None:
        raise ValueError(
            "endpoint.base_url is None: start the embedded server (or set a URL) before call_all"
        )
    run = BatchRun(
        endpoint,
        journal,
        batches,
        todo=todo,
        done=done,
        carried={h: r for h, r in journaled.items() if r.status == "pending"},
        multiplicity=Counter(hashes),
        n_finished=n_from_journal,
        namespace=namespace,
        validate=validate,
        progress=progress,
        allow_truncated=allow_truncated,
    )
    try:
        run.resume_running_batches()
        run.submit_and_poll()
    finally:
        run.close()
    return summarize(hashes, done, endpoint, n_from_journal, len(todo), run.n_http)


class BatchRun:
    """The requests of one `call_all_batch` on their way through batches, until each is finished.

    State (request hash = h):
      todo          h -> request, for every request the journal lacked
      done          h -> finished record (journaled before this run, or by it); shared with the caller
      carried       h -> "pending" record: invalid answers already paid for, a re-ask due
      asked         h -> the re-ask number the next submission asks (the seed offset)
      submissions   h -> times this run put it in a batch (its attempts)
      failures      h -> items that came back without an answer (expired, 5xx); past
                    `max_retries` the run gives up, naming `last_failure[h]`
      in_flight     batch id -> its journaled BatchRecord, for batches not ended yet
      covered       the requests in a batch that has not ended (not to be submitted again)
      n_finished    requests finished, counted with their multiplicity (for `progress`)
      n_http        HTTP requests made (management requests: upload, create, poll, download)
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        journal: Journal,
        batches: Journal,
        *,
        todo: dict[str, ChatRequest],
        done: dict[str, CallRecord],
        carried: dict[str, CallRecord],
        multiplicity: Counter,
        n_finished: int,
        namespace: str,
        validate: Callable[[CallRecord], str | None] | None,
        progress: Callable[[int, int], None] | None,
        allow_truncated: bool,
    ):
        import openai

        self.openai = openai
        self.endpoint, self.journal, self.batches = endpoint, journal, batches
        self.namespace, self.validate, self.allow_truncated = namespace, validate, allow_truncated
        self.progress = progress
        self.todo, self.done, self.carried = todo, done, carried
        self.multiplicity, self.total = multiplicity, sum(multiplicity.values())
        self.n_finished = n_finished
        self.asked = {h: carried[h].answers if h in carried else 0 for h in todo}
        self.submissions: Counter = Counter()
        self.failures: Counter = Counter()
        self.last_failure: dict[str, str] = {}
        self.in_flight: dict[str, BatchRecord] = {}
        self.covered: set[str] = set()
        self.n_http = 0
        self.lease = held_lease()  # the stage's lease, confirmed before each submission
        self.api_key = resolve_api_key(endpoint)
        self.base_url = endpoint.base_url
        # the client's own retries (backoff, Retry-After) cover the few management requests
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
        )

    def close(self) -> None:
        self.client.close()
        self.journal.close()
        self.batches.close()

    # ---------------------------------------------------------------- the two phases

    def resume_running_batches(self) -> None:
        """Batches a killed run left running: poll them instead of submitting their requests again."""
        listed: list[Any] | None = None
        for rec in self.batches.load_all().values():
            if rec.state == "done":
                continue
            if not any(self._awaited(h, k) for h, k in rec.items.items()):
                self.batches.append(rec.model_copy(update={"state": "done"}))
                continue
            if (
                rec.batch_id is None
            ):  # died between upload and journaling the batch id: was it created?
                if listed is None:
                    listed = list(
                        itertools.islice(
                            self._api("batch list", self.client.batches.list, limit=100), 1000
                        )
                    )
                found = next((x for x in listed if x.input_file_id == rec.input_file_id), None)
                if found is None:
                    self.batches.append(rec.model_copy(update={"state": "done"}))
                    continue
                rec = rec.model_copy(update={"batch_id": found.id, "state": "submitted"})
                self.batches.append(rec)
            self.in_flight[rec.batch_id] = rec
            self.covered.update(h for h, k in rec.items.items() if self._awaited(h, k))
            log.info("batch %s: resuming (submitted by an earlier run)", rec.batch_id)

    def submit_and_poll(self) -> None:
        """Submit what no running batch covers, poll, journal results, submit failed items again."""
        ep = self.endpoint
        delay = ep.batch_poll_s
        while True:
            waiting = [h for h in self.todo if h not in self.done and h not in self.covered]
            for i in range(0, len(waiting), ep.batch_max_requests):
                self._submit(waiting[i : i + ep.batch_max_requests])
            if not self.in_flight:
                break
            _sleep_sync(delay)
            ended = False
            for bid, rec in list(self.in_flight.items()):
                b = self._api("batch status", self.client.batches.retrieve, bid)
                if b.status in _BATCH_LIVE:
                    continue
                del self.in_flight[bid]
                ended = True
                for h in rec.items:
                    self.covered.discard(h)
                self._collect(rec, b)
            delay = ep.batch_poll_s if ended else min(delay * 2, ep.batch_poll_max_s)

    # ---------------------------------------------------------------- steps

    def _awaited(self, h: str, k: int) -> bool:
        """Whether a batch item (request h, re-ask k) is the answer this run still waits for."""
        return h in self.todo and h not in self.done and self.asked[h] == k

    def _api(self, what: str, fn: Callable, *a: Any, **kw: Any) -> Any:
        """One management request; its failure becomes an LLMCallError naming the endpoint."""
        self.n_http += 1
        try:
            return fn(*a, **kw)
        except self.openai.APIStatusError as e:
            hint = (
                " (does this endpoint offer the Batch API? otherwise use mode 'sync')"
                if e.status_code in (404, 405)
                else ""
            )
            last = redact(f"HTTP {e.status_code}: {e.message}", self.api_key)
        except self.openai.OpenAIError as e:
            hint, last = "", redact(f"{type(e).__name__}: {e}", self.api_key)
        raise LLMCallError(
            f"Batch API {what} at {self.base_url} failed: {last}{hint}",
            endpoint=self.base_url,
            last_error=last,
        )

    def _finish(self, h: str, record: CallRecord) -> None:
        self.journal.append(record)  # before anything else can fail: this answer is paid for
        self.done[h] = record
        self.n_finished += self.multiplicity[h]
        if self.progress is not None:
            self.progress(self.n_finished, self.total)

    def _submit(self, chunk: list[str]) -> None:
        if self.lease is not None:
            self.lease.confirm()  # a run that lost its lease submits nothing more
        lines = []
        for h in chunk:
            req = self.todo[h]
            # re-asks use seed+1, ... as in sync mode
            seed = None if req.seed is None else req.seed + self.asked[h]
            body = request_body(self.endpoint.model, req, seed)
            lines.append(
                {"custom_id": h, "method": "POST", "url": "/v1/chat/completions", "body": body}
            )
        data = "".join(canonical_json(x) + "\n" for x in lines).encode("utf-8")
        f = self._api(
            "file upload",
            self.client.files.create,
            file=("sgpo-batch.jsonl", data, "application/jsonl"),
            purpose="batch",
        )
        rec = BatchRecord(
            batch_key=hashlib.sha256(f.id.encode()).hexdigest()[:32],
            input_file_id=f.id,
            items={h: self.asked[h] for h in chunk},
            state="uploaded",
            created_at=time.time(),
        )
        # journaled before the batch exists: a kill from here on finds it by file id
        self.batches.append(rec)
        b = self._api(
            "batch create",
            self.client.batches.create,
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"sgpo_namespace": self.namespace[:512]},
        )
        rec = rec.model_copy(update={"batch_id": b.id, "state": "submitted"})
        self.batches.append(rec)
        self.submissions.update(chunk)
        self.in_flight[b.id] = rec
        self.covered.update(chunk)
        log.info("batch %s: %d requests submitted to %s", b.id, len(chunk), self.base_url)

    def _results(self, b: Any) -> dict[str, dict[str, Any]]:
        """The output and error lines of an ended batch, by custom_id (= request hash)."""
        results: dict[str, dict[str, Any]] = {}
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                for line in self._api(
                    "file download", self.client.files.content, fid
                ).text.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        results[item.get("custom_id")] = item
        return results

    def _collect(self, rec: BatchRecord, b: Any) -> None:
        """Journal what an ended batch answered; what it did not is due again, or given up on."""
        if b.status == "failed":  # the whole input was refused: a bug or a configuration problem
            errs = getattr(b.errors, "data", None) or []
            why = "; ".join(f"line {e.line}: {e.message}" for e in errs) or "no reason given"
            self.batches.append(rec.model_copy(update={"state": "done"}))
            raise LLMCallError(
                f"batch {b.id} at {self.base_url} failed validation: {why}",
                endpoint=self.base_url,
                last_error=why,
            )
        results = self._results(b)
        given_up = []
        for h, k in rec.items.items():
            if not self._awaited(h, k):
                continue  # answered already (a run that died after journaling it), or a stale item
            if not self._settle(h, k, results.get(h) or {}, rec, b):
                given_up.append(h)
        self.batches.append(rec.model_copy(update={"state": "done"}))
        if given_up:
            names = ", ".join(
                f"{self.todo[h].key!r} ({self.last_failure[h]})" for h in given_up[:10]
            )
            more = f" and {len(given_up) - 10} more" if len(given_up) > 10 else ""
            raise LLMCallError(
                f"{len(given_up)} request(s) got no answer in {self.endpoint.max_retries + 1} batch "
                f"submission(s) to {self.base_url}: {names}{more}",
                endpoint=self.base_url,
                key=self.todo[given_up[0]].key,
                last_error=self.last_failure[given_up[0]],
            )

    def _settle(self, h: str, k: int, item: dict[str, Any], rec: BatchRecord, b: Any) -> bool:
        """Act on one item's result: finish it, re-ask it, or submit it again. False: given up."""
        req, prev = self.todo[h], self.carried.get(h)
        prior = (prev.prompt_tokens, prev.completion_tokens) if prev else (0, 0)
        attempts = (prev.attempts if prev else 0) + self.submissions[h]
        resp = item.get("response") or {}
        status = resp.get("status_code")
        if status == 200:
            self._take_answer(h, k, resp.get("body"), prior=prior, attempts=attempts, batch_id=b.id)
            return True
        code, message = _batch_item_error(resp)
        if is_per_request_rejection(status, code):
            self._finish(
                h,
                CallRecord(
                    request_hash=h,
                    key=req.key,
                    status="invalid",
                    reason=f"rejected:{code}",
                    attempts=attempts,
                    answers=k,
                    model=self.endpoint.model,
                    prompt_tokens=prior[0],
                    completion_tokens=prior[1],
                    batch=True,
                    raw_response=redact(json.dumps(resp.get("body")), self.api_key),
                ),
            )
            return True
        if status is not None and 400 <= status < 500 and status not in RETRIABLE_4XX:
            last = redact(f"HTTP {status}: {message}", self.api_key)
            self.batches.append(rec.model_copy(update={"state": "done"}))
            raise LLMCallError(
                f"LLM request {req.key!r} in batch {b.id} at {self.base_url} was rejected: {last}",
                endpoint=self.base_url,
                key=req.key,
                last_error=last,
            )
        # expired, failed at the provider (5xx, 429), or absent from the output: submit it again
        self.failures[h] += 1
        err = item.get("error") if isinstance(item.get("error"), dict) else {}
        self.last_failure[h] = err.get("code") or (
            f"HTTP {status}" if status else f"no result (batch {b.status})"
        )
        if self.failures[h] > self.endpoint.max_retries:
            return False
        self.covered.discard(h)
        return True

    def _take_answer(
        self, h: str, k: int, body: Any, *, prior: tuple[int, int], attempts: int, batch_id: str
    ) -> None:
        """A 200 item: keep it, or (invalid) re-ask it in the next batch while re-asks are left."""
        from openai.types.chat import ChatCompletion

        req = self.todo[h]
        try:
            completion = ChatCompletion.model_validate(body)
        except ValidationError:
            raise LLMCallError(
                f"batch {batch_id} at {self.base_url}: the answer to {req.key!r} is not a chat "
                "completion",
                endpoint=self.base_url,
                key=req.key,
            ) from None
        record = answer_record(
            req,
            h,
            completion,
            json.dumps(body),
            prior=prior,
            attempts=attempts,
            answers=k + 1,
            default_model=self.endpoint.model,
            batch=True,
        )
        reason = unusable_reason(completion, self.allow_truncated)
        if reason is None and self.validate is not None:
            reason = self.validate(record)
        if reason is None:
            self._finish(h, record)
            return
        record = record.model_copy(update={"status": "invalid", "reason": reason})
        if k < self.endpoint.max_invalid_retries:  # re-ask in the next batch; keep the paid tokens
            self.carried[h] = record.model_copy(update={"status": "pending"})
            self.journal.append(self.carried[h])
            self.asked[h] = k + 1
            self.covered.discard(h)
        else:
            self._finish(h, record)
