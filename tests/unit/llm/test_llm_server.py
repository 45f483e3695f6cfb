"""The local OpenAI-compatible server's fault injection, decided without serving: deterministic per
request and attempt, and bounded. The server itself, driven by the official `openai` client:
tests/integration/llm/test_llm_server.py."""

from __future__ import annotations

import pytest

from sgpo.llm.server import FaultConfig


def test_fault_decisions_are_deterministic_and_bounded():
    cfg = FaultConfig(
        seed=3,
        rate_429=0.2,
        rate_500=0.2,
        rate_timeout=0.1,
        rate_empty=0.1,
        rate_truncated=0.1,
        max_faults_per_request=2,
    )
    decisions = [cfg.decide(f"h{i}", a) for i in range(2000) for a in range(3)]
    assert decisions == [cfg.decide(f"h{i}", a) for i in range(2000) for a in range(3)]
    assert all(
        d is None for d in decisions[2::3]
    )  # attempt 2 >= max_faults_per_request: always answered
    first = decisions[0::3]
    share = {
        k: first.count(k) / len(first) for k in ("429", "500", "timeout", "empty", "truncated")
    }
    assert share["429"] == pytest.approx(0.2, abs=0.04) and share["timeout"] == pytest.approx(
        0.1, abs=0.03
    )
    assert FaultConfig(seed=4, rate_500=0.5).decide("h1", 0) in (None, "500")
    with pytest.raises(ValueError):
        FaultConfig(rate_429=0.7, rate_500=0.5)
