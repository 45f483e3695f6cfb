"""The embedded stand-in for the external LLM: a local OpenAI-compatible server over a local model.

Used when an endpoint has no base_url; annotation and judging then talk to it through the real
openai client over HTTP, exactly as they would talk to GPT-4 Turbo. `EmbeddedLLM` starts the
server only when a stage that needs it actually runs (a fully cached run starts nothing).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

EMBEDDED_MODEL_NAME = "sgpo-embedded"


@contextlib.contextmanager
def embedded_llm(model_dir: str, *, max_new_tokens_cap: int) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT/v1) of a server for `model_dir`."""
    from sgpo.llm.server import TransformersChatBackend, build_app, running_server

    # The cap keeps a tiny stand-in model from rambling to every request's max_tokens.
    app = build_app(TransformersChatBackend(model_dir), model_name=EMBEDDED_MODEL_NAME, max_tokens_cap=max_new_tokens_cap)
    with running_server(app) as base_url:
        yield base_url


class EmbeddedLLM:
    """A server started on first `base_url()` and stopped by `close()` (use as a context manager)."""

    def __init__(self, model_dir: Callable[[], str], *, max_new_tokens_cap: int):
        self._model_dir, self._cap = model_dir, max_new_tokens_cap
        self._stack = contextlib.ExitStack()
        self._url: str | None = None

    @property
    def started(self) -> bool:
        return self._url is not None

    def base_url(self) -> str:
        if self._url is None:
            model_dir = self._model_dir()
            self._url = self._stack.enter_context(embedded_llm(model_dir, max_new_tokens_cap=self._cap))
            print(f"[sgpo] embedded stand-in LLM at {self._url} (model {model_dir})", flush=True)
        return self._url

    def close(self) -> None:
        self._stack.close()
        self._url = None

    def __enter__(self) -> EmbeddedLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
