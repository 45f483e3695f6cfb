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

The modules, one concern each: `records` (requests, records, summary), `journal`, `credentials`
(the API key, kept out of messages), `retry` (classifying failures, backoff), `completions` (the
wire format both modes share), `sync`, `batch`, `cost`, `errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# EndpointConfig is re-exported: callers build endpoints from here too
from sgpo.config import EndpointConfig
from sgpo.llm.client.batch import BatchRecord, call_all_batch, open_batch_journal
from sgpo.llm.client.cost import cost_line
from sgpo.llm.client.errors import ExternalLLMNotConfigured, LLMCallError
from sgpo.llm.client.journal import Journal, LocalJournal, ObjectStoreJournal, open_journal
from sgpo.llm.client.records import CallRecord, CallSummary, ChatRequest
from sgpo.llm.client.sync import call_all_sync

__all__ = [
    "BatchRecord",
    "CallRecord",
    "CallSummary",
    "ChatRequest",
    "EndpointConfig",
    "ExternalLLMNotConfigured",
    "Journal",
    "LLMCallError",
    "LocalJournal",
    "ObjectStoreJournal",
    "call_all",
    "cost_line",
    "open_batch_journal",
    "open_journal",
]


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
        return call_all_batch(
            requests,
            endpoint,
            journal,
            open_batch_journal(journal_url, storage_options),
            namespace,
            validate,
            progress,
            allow_truncated,
        )
    return call_all_sync(
        requests, endpoint, journal, namespace, validate, progress, allow_truncated
    )
