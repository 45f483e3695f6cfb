"""The embedded stand-in for the external LLM: a local OpenAI-compatible server over a local model.

Used when an endpoint has no base_url; annotation and judging then talk to it through the real
openai client over HTTP, exactly as they would talk to GPT-4 Turbo. `EmbeddedLLM` starts the
server only when a stage that needs it actually runs (a fully cached run starts nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from sgpo.llm.server import ChatBackend, TransformersChatBackend, build_app, running_server

EMBEDDED_MODEL_NAME = "sgpo-embedded"
# Generations the stand-in runs at once. One: a model on a CPU generates one answer at a time
# (measured on SmolLM2, 2 cores: batching 4-8 concurrent annotate requests into one `generate` saved
# under 20%, and would cost the per-request seeding that makes an equal request give an equal answer).
MAX_PARALLEL = 1


@contextlib.contextmanager
def embedded_llm(
    model_dir: str, *, max_new_tokens_cap: int, judge: str = "model", annotator: str = "model"
) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT/v1) of a server for `model_dir`; with judge='rule'
    the judge prompts are answered by sgpo.llm.rule_judge instead of the model."""
    model = TransformersChatBackend(model_dir)
    backend: Any = model
    if judge == "rule":
        from sgpo.llm.rule_judge import RuleJudgeBackend

        backend = RuleJudgeBackend(backend)
    if (
        judge == "testbed" or annotator == "oracle"
    ):  # the testbed's verifier judge / oracle annotator
        from sgpo.llm.oracle import TestbedBackend

        backend = TestbedBackend(backend, judge=judge == "testbed", annotator=annotator == "oracle")
    try:
        with running_server(
            stand_in_app(backend, max_new_tokens_cap=max_new_tokens_cap)
        ) as base_url:
            try:
                yield base_url
            finally:
                # before the server stops: a generation under way (its client gave up, e.g. the stage
                # failed) ends at its next token, so the server stops cleanly and no thread is left
                # inside torch when the process exits (that aborts it: SIGABRT instead of the CLI's error)
                model.close()
    finally:
        model.close()


def stand_in_app(backend: ChatBackend, *, max_new_tokens_cap: int) -> Any:
    """The app the stand-in serves around `backend`. The cap keeps a tiny stand-in model from
    rambling to every request's max_tokens. The model answers one request at a time while a client
    sends `max_concurrency` at once, each with a timeout: one turn at a time, so a request whose
    client gave up while it waited is dropped, and the client's retry does not queue behind it."""
    return build_app(
        backend,
        model_name=EMBEDDED_MODEL_NAME,
        max_tokens_cap=max_new_tokens_cap,
        max_parallel=MAX_PARALLEL,
    )


def embedded_model_name(section: Any, *, judge: str = "model", annotator: str = "model") -> str:
    """The model name an LLM stage's endpoint gets when the stand-in answers it (part of the stage's
    cache key and journal): a judge stage answered by a rule or the testbed's verifier, or annotation
    answered by the oracle, is a different LLM from the model."""
    from sgpo.config import PairJudgeConfig

    is_judge = isinstance(section, PairJudgeConfig)
    if is_judge and judge == "rule":
        from sgpo.llm.rule_judge import MODEL_NAME

        return MODEL_NAME
    if is_judge and judge == "testbed":
        from sgpo.llm.oracle import VERIFIER_MODEL_NAME

        return VERIFIER_MODEL_NAME
    if not is_judge and annotator == "oracle":  # the annotate stage
        from sgpo.llm.oracle import ORACLE_MODEL_NAME

        return ORACLE_MODEL_NAME
    return EMBEDDED_MODEL_NAME


class EmbeddedLLM:
    """A server started on first `base_url()` and stopped by `close()` (use as a context manager)."""

    def __init__(
        self,
        model_dir: Callable[[], str],
        *,
        max_new_tokens_cap: int,
        judge: str = "model",
        annotator: str = "model",
        timeout_s: float = 600.0,
    ):
        self._model_dir, self._cap, self.judge, self.annotator = (
            model_dir,
            max_new_tokens_cap,
            judge,
            annotator,
        )
        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()
        self._url: str | None = None

    @property
    def started(self) -> bool:
        return self._url is not None

    def base_url(self) -> str:
        if self._url is None:
            model_dir = self._model_dir()
            self._url = self._stack.enter_context(
                embedded_llm(
                    model_dir,
                    max_new_tokens_cap=self._cap,
                    judge=self.judge,
                    annotator=self.annotator,
                )
            )
            print(f"[sgpo] embedded stand-in LLM at {self._url} (model {model_dir})", flush=True)
        return self._url

    def endpoint(self, ep: Any, model: str) -> Any:
        """`ep` (an EndpointConfig) pointed at this server (started now if it is not running), with
        the client fitted to a server that answers one request at a time: at most MAX_PARALLEL
        requests in flight (more would only queue at the server, where the client's timeout runs
        out on the queue, not on the work) and a per-attempt timeout of at least `timeout_s` (one
        generation). Runtime settings only: the stage's cache key does not change."""
        return ep.model_copy(
            update={
                "base_url": self.base_url(),
                "model": model,
                "max_concurrency": min(ep.max_concurrency, MAX_PARALLEL),
                "timeout_s": max(ep.timeout_s, self.timeout_s),
            }
        )

    @classmethod
    def from_config(cls, cfg: Any, base_model_dir: Callable[[], str]) -> EmbeddedLLM:
        """From an EmbeddedLLMConfig: the flow's base (or evaluated) model unless `cfg.model` names a dir."""
        return cls(
            base_model_dir if cfg.model == "base" else (lambda: cfg.model),
            max_new_tokens_cap=cfg.max_new_tokens_cap,
            judge=cfg.judge,
            annotator=cfg.annotator,
            timeout_s=cfg.timeout_s,
        )

    def close(self) -> None:
        self._stack.close()
        self._url = None

    def __enter__(self) -> EmbeddedLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
