"""The embedded stand-in for the external LLM: a local OpenAI-compatible server over a local model.

Started by the pipeline when an endpoint has no base_url; annotation and judging then talk to
it through the real openai client over HTTP, exactly as they would talk to GPT-4 Turbo.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

EMBEDDED_MODEL_NAME = "sgpo-embedded"


@dataclass
class CappedBackend:
    """Caps generated tokens: a tiny stand-in model would otherwise ramble to max_tokens."""

    inner: Any
    cap: int

    def chat(self, messages, *, max_tokens, **kw):
        return self.inner.chat(messages, max_tokens=min(max_tokens, self.cap), **kw)


@contextlib.contextmanager
def embedded_llm(model_dir: str, *, max_new_tokens_cap: int) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT/v1) of a server for `model_dir`."""
    from sgpo.llm.server import TransformersChatBackend, build_app, running_server

    backend = CappedBackend(TransformersChatBackend(model_dir), max_new_tokens_cap)
    with running_server(build_app(backend, model_name=EMBEDDED_MODEL_NAME)) as base_url:
        yield base_url
