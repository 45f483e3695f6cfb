"""A local OpenAI-compatible chat server: the stand-in for the paid external LLM.

It serves `POST /v1/chat/completions` in exactly OpenAI's `chat.completion` shape, so the
pipeline's client (the official `openai` package) cannot tell it from the real thing. Two uses:

* the embedded external LLM when an endpoint has no `base_url` (tiny runs, CI, offline work);
* fault injection (`FaultConfig`): 429 with Retry-After, 500, slow answers that the client
  times out on, empty and truncated answers, decided deterministically so tests reproduce.

It also serves OpenAI's Batch API (`/v1/files` upload and content, `/v1/batches` create,
retrieve and list), kept in memory; batch items go through the same completion code and faults,
and a batch can be made slow (`batch_latency_s`) or expire part-way (`expire_batches`).

Every request can be appended to a JSONL request log (one line per request, flushed at once),
so tests can prove that no request whose completion was delivered was ever sent again.

Run it on its own with
`python -m sgpo.llm.server --model DIR --port 8000 --served-model-name tiny [--fault-config JSON]`.

The modules, one concern each: `backend` (ChatResult, the ChatBackend protocol),
`transformers_backend` (a local model), `wire` (OpenAI's request and response shapes), `completions`
(one completion, shared by the sync endpoint and batch items), `app` (build_app and its routes),
`faults` and `batch_api` (test fakes, registered only when asked), `request_log`, `runner`
(running_server), `__main__` (the CLI).
"""

from sgpo.llm.server.app import build_app
from sgpo.llm.server.backend import ChatBackend, ChatResult, FinishReason
from sgpo.llm.server.faults import FaultConfig, FaultKind
from sgpo.llm.server.request_log import read_request_log
from sgpo.llm.server.runner import running_server
from sgpo.llm.server.transformers_backend import TransformersChatBackend
from sgpo.llm.server.wire import canonical_request_hash

__all__ = [
    "ChatBackend",
    "ChatResult",
    "FaultConfig",
    "FaultKind",
    "FinishReason",
    "TransformersChatBackend",
    "build_app",
    "canonical_request_hash",
    "read_request_log",
    "running_server",
]
