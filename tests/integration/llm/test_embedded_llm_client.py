"""The client fits the stand-in LLM (issue 20, failure 1).

The stand-in generates one answer at a time. A stage's endpoint settings are made for a paid API
(`max_concurrency` requests in flight, a per-attempt timeout): against the stand-in every request
after the first waited in the server's queue while its timeout ran, so annotate timed out on a real
model. Pointing a stage at the stand-in now fits its client: one request in flight, a timeout of at
least `embedded_llm.timeout_s`.
"""

from __future__ import annotations

import time

from artifacts.refs import ArtifactRef
from flows.runner import StageRunner
from sgpo.config import AnnotateStageConfig, EndpointConfig, StoreConfig
from sgpo.core import StageContext
from sgpo.llm.client import ChatRequest, call_all
from sgpo.llm.embedded import EmbeddedLLM
from tasks import get_stage

TOKENS = 300  # per answer: the endless model writes exactly this many


def _requests(n: int, tag: str) -> list[ChatRequest]:
    return [
        ChatRequest(
            key=f"{tag}{i}",
            messages=[{"role": "user", "content": f"Question {i}?"}],
            max_tokens=TOKENS,
            temperature=0.7,
            top_p=0.9,
            seed=i,
        )
        for i in range(n)
    ]


def test_stage_pointed_at_the_stand_in_gets_a_client_it_can_serve(endless_model, tmp_path):
    samples = ArtifactRef(
        uri=f"file://{tmp_path}/sample/k",
        kind="table",
        stage="sample",
        cache_key="k" * 64,
        content_hash="0" * 64,
    )
    with EmbeddedLLM(lambda: str(endless_model), max_new_tokens_cap=TOKENS) as llm:
        # one generation alone: how long this machine takes for one answer
        url = llm.base_url()
        t0 = time.perf_counter()
        warm = EndpointConfig(base_url=url, model="sgpo-embedded", api_key_env="NO_KEY_NEEDED")
        call_all(
            _requests(1, "warm"),
            warm,
            journal_url=str(tmp_path / "warm.jsonl"),
            namespace="warm",
            allow_truncated=True,
        )
        one = time.perf_counter() - t0
        # a stage configured for a paid API: 4 in flight, a timeout of 1.5 generations, no retry
        cfg = AnnotateStageConfig(
            endpoint={"timeout_s": 1.5 * one, "max_concurrency": 4, "max_retries": 0}
        )
        ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
        runner = StageRunner(ctx, [], llm=llm)
        fitted = runner._point_at_embedded(
            get_stage("annotate"), cfg, {"samples": samples}, None, False
        )
        ep = fitted.endpoint
        assert ep.base_url == url and ep.max_concurrency == 1 and ep.timeout_s >= 600
        assert cfg.endpoint.max_retries == ep.max_retries == 0  # the rest is the stage's
        result = call_all(
            _requests(6, "q"),
            ep,
            journal_url=str(tmp_path / "calls.jsonl"),
            namespace="annotate-like",
            allow_truncated=True,
        )
    assert result.n_ok == 6
