"""The embedded stand-in for the external LLM: a local OpenAI-compatible server over a local model.

Started by the pipeline when an endpoint has no base_url; annotation and judging then talk to
it through the real openai client over HTTP, exactly as they would talk to GPT-4 Turbo.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

EMBEDDED_MODEL_NAME = "sgpo-embedded"


@contextlib.contextmanager
def embedded_llm(model_dir: str, *, max_new_tokens_cap: int) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT/v1) of a server for `model_dir`."""
    from sgpo.llm.server import TransformersChatBackend, build_app, running_server

    # The cap keeps a tiny stand-in model from rambling to every request's max_tokens.
    app = build_app(TransformersChatBackend(model_dir), model_name=EMBEDDED_MODEL_NAME, max_tokens_cap=max_new_tokens_cap)
    with running_server(app) as base_url:
        yield base_url
