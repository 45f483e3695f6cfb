"""The client's errors: a call that could not be completed, an LLM stage without an endpoint."""

from __future__ import annotations


class LLMCallError(RuntimeError):
    """A request that could not be completed. Names the endpoint and request key, never the API key."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        key: str | None = None,
        last_error: str | None = None,
        retriable: bool = False,
    ):
        super().__init__(message)
        self.endpoint, self.key, self.last_error = endpoint, key, last_error
        # True only when the provider was overloaded or unreachable (429, 5xx, timeouts) past our own
        # retries: a later task-level retry may succeed. 4xx, a missing key, non-OpenAI answers: never.
        self.retriable = retriable

    def __reduce__(
        self,
    ):  # keep the attributes across pickling (Prefect ships exceptions between processes)
        return (
            _rebuild_llm_call_error,
            (str(self), self.endpoint, self.key, self.last_error, self.retriable),
        )


class ExternalLLMNotConfigured(RuntimeError):
    """A stage that calls an LLM has no endpoint (base_url) to call."""


def _rebuild_llm_call_error(
    message: str,
    endpoint: str | None,
    key: str | None,
    last_error: str | None,
    retriable: bool = False,
) -> LLMCallError:
    return LLMCallError(
        message, endpoint=endpoint, key=key, last_error=last_error, retriable=retriable
    )
