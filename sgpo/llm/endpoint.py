"""The preflight of a stage that calls an LLM: its endpoint must be configured before any work."""

from __future__ import annotations

from typing import Any

from sgpo.core.stage import Stage
from sgpo.llm.client import ExternalLLMNotConfigured


def require_endpoint(st: Stage, cfg: Any) -> None:
    """The stage's `llm` endpoint has a base_url, or ExternalLLMNotConfigured naming the key. Inside a
    flow the embedded stand-in fills it in; a stage run alone must be told where its LLM is."""
    if not getattr(cfg, st.llm).base_url:
        raise ExternalLLMNotConfigured(
            f"{st.section}.{st.llm}.base_url is not set: configure the LLM this stage calls (base_url, "
            "model, api_key_env), or run it inside a flow, which starts the embedded local server"
        )
