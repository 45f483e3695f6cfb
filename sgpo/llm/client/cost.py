"""What a set of calls cost: the summary over its records and the stage log's cost line."""

from __future__ import annotations

from collections import Counter

from sgpo.config import EndpointConfig
from sgpo.llm.client.records import CallRecord, CallSummary


def cost_line(stage: str, result: CallSummary, endpoint: EndpointConfig) -> str:
    """One line for the stage log: calls, tokens and what they cost (journaled calls included)."""
    cost = (
        f"${result.cost_usd:.4f}"
        if result.cost_usd is not None
        else "unknown (set endpoint.price_per_1m_prompt_tokens and price_per_1m_completion_tokens)"
    )
    return (
        f"{stage}: {len(result.records)} calls to {endpoint.model} ({result.n_ok} ok, {result.n_invalid} invalid; "
        f"{result.n_sent} sent now in {result.n_http_requests} HTTP requests, {result.n_from_journal} from the "
        f"journal): {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens, cost {cost}"
    )


def summarize(
    hashes: list[str],
    done: dict[str, CallRecord],
    endpoint: EndpointConfig,
    n_from_journal: int,
    n_sent: int,
    n_http: int,
) -> CallSummary:
    records = [done[h] for h in hashes]
    reasons = Counter(r.reason or "unknown" for r in records if r.status == "invalid")
    paid = [
        done[h] for h in dict.fromkeys(hashes)
    ]  # each distinct request once: that is what was paid
    prompt_tokens = sum(r.prompt_tokens for r in paid)
    completion_tokens = sum(r.completion_tokens for r in paid)
    cost = None
    if (
        endpoint.price_per_1m_prompt_tokens is not None
        and endpoint.price_per_1m_completion_tokens is not None
    ):
        cost = (
            sum(
                (
                    r.prompt_tokens * endpoint.price_per_1m_prompt_tokens
                    + r.completion_tokens * endpoint.price_per_1m_completion_tokens
                )
                * (endpoint.batch_discount if r.batch else 1)
                for r in paid
            )
            / 1e6
        )
    return CallSummary(
        records=records,
        n_ok=sum(r.status == "ok" for r in records),
        n_invalid=sum(r.status == "invalid" for r in records),
        n_from_journal=n_from_journal,
        n_sent=n_sent,
        n_http_requests=n_http,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        invalid_reasons=dict(reasons),
    )
