"""The embedded stand-in for the external LLM: a local OpenAI-compatible server over a local model.

Used when an endpoint has no base_url; annotation and judging then talk to it through the real
openai client over HTTP, exactly as they would talk to GPT-4 Turbo. `EmbeddedLLM` starts the
server only when a stage that needs it actually runs (a fully cached run starts nothing).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

EMBEDDED_MODEL_NAME = "sgpo-embedded"


@contextlib.contextmanager
def embedded_llm(model_dir: str, *, max_new_tokens_cap: int, judge: str = "model", annotator: str = "model") -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT/v1) of a server for `model_dir`; with judge='rule'
    the judge prompts are answered by sgpo.llm.rule_judge instead of the model."""
    from sgpo.llm.server import TransformersChatBackend, build_app, running_server

    backend: Any = TransformersChatBackend(model_dir)
    if judge == "rule":
        from sgpo.llm.rule_judge import RuleJudgeBackend

        backend = RuleJudgeBackend(backend)
    if judge == "testbed" or annotator == "oracle":  # the testbed's verifier judge / oracle annotator
        from sgpo.llm.oracle import TestbedBackend

        backend = TestbedBackend(backend, judge=judge == "testbed", annotator=annotator == "oracle")
    # The cap keeps a tiny stand-in model from rambling to every request's max_tokens.
    app = build_app(backend, model_name=EMBEDDED_MODEL_NAME, max_tokens_cap=max_new_tokens_cap)
    with running_server(app) as base_url:
        yield base_url


class EmbeddedLLM:
    """A server started on first `base_url()` and stopped by `close()` (use as a context manager)."""

    def __init__(self, model_dir: Callable[[], str], *, max_new_tokens_cap: int, judge: str = "model",
                 annotator: str = "model"):
        self._model_dir, self._cap, self.judge, self.annotator = model_dir, max_new_tokens_cap, judge, annotator
        self._stack = contextlib.ExitStack()
        self._url: str | None = None

    @property
    def started(self) -> bool:
        return self._url is not None

    def base_url(self) -> str:
        if self._url is None:
            model_dir = self._model_dir()
            self._url = self._stack.enter_context(embedded_llm(model_dir, max_new_tokens_cap=self._cap, judge=self.judge,
                                                                annotator=self.annotator))
            print(f"[sgpo] embedded stand-in LLM at {self._url} (model {model_dir})", flush=True)
        return self._url

    def model_name_for(self, section: Any) -> str:
        """The model name a stage's endpoint gets (part of its cache key and journal): a judge stage
        answered by the rule judge is a different judge from the model."""
        from sgpo.config import PairJudgeConfig

        if self.judge == "rule" and isinstance(section, PairJudgeConfig):
            from sgpo.llm.rule_judge import MODEL_NAME

            return MODEL_NAME
        if self.judge == "testbed" and isinstance(section, PairJudgeConfig):
            from sgpo.llm.oracle import VERIFIER_MODEL_NAME

            return VERIFIER_MODEL_NAME
        if self.annotator == "oracle" and not isinstance(section, PairJudgeConfig):  # the annotate stage
            from sgpo.llm.oracle import ORACLE_MODEL_NAME

            return ORACLE_MODEL_NAME
        return EMBEDDED_MODEL_NAME

    def close(self) -> None:
        self._stack.close()
        self._url = None

    def __enter__(self) -> EmbeddedLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
