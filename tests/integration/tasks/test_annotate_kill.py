"""The annotate stage end to end against a local OpenAI-compatible server with a deterministic
fake model: injected faults give the right ok/invalid counts; kill -9 at random moments, then a
re-run, gives the same artifact as an uninterrupted run and pays for no answer twice (except
answers delivered to a process that died before journaling them)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from sgpo.config import AnnotateStageConfig, StoreConfig
from sgpo.core import StageContext, run_stage
from sgpo.llm.client import EndpointConfig, LocalJournal
from sgpo.llm.server import ChatResult, FaultConfig, build_app, read_request_log, running_server
from tasks import get_stage

ANNOTATE = get_stage("annotate")

REPO = Path(__file__).resolve().parents[3]


class DeterministicBackend:
    """A fake external LLM: the answer is a pure function of the messages and the seed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0

    def chat(
        self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop
    ) -> ChatResult:
        with self._lock:
            self.calls += 1
        digest = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()
        words = [f"w{digest[i : i + 4]}" for i in range(0, 40, 4)]  # ten "tokens"
        finish = "stop"
        if len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return ChatResult(" ".join(words), finish, prompt_tokens, len(words) + (finish == "stop"))


def publish_samples(store, n: int):
    import pyarrow as pa

    rows = {
        "prompt_id": [f"p{i}" for i in range(n)],
        "prompt": [f"Question number {i}: what is {i} + {i}?" for i in range(n)],
        "reference": [f"It is {2 * i}." for i in range(n)],
        "policy": [f"I think it is {2 * i + (i % 3)}." for i in range(n)],
        "sample_index": [0] * n,
        "policy_finish_reason": ["stop"] * n,
    }
    return store.publish_table(
        "sample", hashlib.sha256(f"samples-{n}".encode()).hexdigest(), pa.table(rows), manifest={}
    )


def stage_config(url: str | None, **endpoint) -> AnnotateStageConfig:
    ep = dict(
        base_url=url,
        model="fake-ext",
        api_key_env="SGPO_TEST_NO_SUCH_KEY",
        max_concurrency=4,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        timeout_s=10,
        max_invalid_retries=1,
        price_per_1m_prompt_tokens=2.0,
        price_per_1m_completion_tokens=6.0,
    )
    return AnnotateStageConfig(endpoint=EndpointConfig(**{**ep, **endpoint}), max_tokens=64)


def journal_path(store, samples, cfg) -> Path:
    url = store.work_url(ANNOTATE.name, ANNOTATE.cache_key(cfg, {"samples": samples})) + "/calls"
    return Path(url.removeprefix("file://"))


def serve(log: Path | None = None, faults: FaultConfig | None = None):
    return running_server(
        build_app(DeterministicBackend(), model_name="fake-ext", faults=faults, request_log=log)
    )


# --------------------------------------------------------------------------- faults (fast)


def test_annotate_stage_survives_injected_faults_with_correct_counts(tmp_path, monkeypatch):
    import sgpo.llm.client.sync as sync_mod

    real_sleep = sync_mod._sleep

    async def short_sleep(d: float) -> None:  # Retry-After and backoff honoured, but kept short
        await real_sleep(min(d, 0.02))

    monkeypatch.setattr(sync_mod, "_sleep", short_sleep)
    faults = FaultConfig(
        seed=3,
        rate_429=0.1,
        retry_after_s=0.5,
        rate_500=0.1,
        rate_timeout=0.05,
        timeout_sleep_s=4.0,
        rate_empty=0.12,
        rate_truncated=0.12,
        max_faults_per_request=2,
    )
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    store = ctx.open_store()
    samples = publish_samples(store, 30)
    log = tmp_path / "requests.jsonl"
    # client timeout 1.5 s: far above a normal (instant) answer, far below an injected timeout
    with serve(log, faults) as url:
        cfg = stage_config(url, timeout_s=1.5)
        ref = run_stage(ANNOTATE, cfg, ctx, {"samples": samples})
    entries = read_request_log(log)
    seen = Counter(e["fault"] for e in entries)
    assert {"429", "500", "timeout", "empty", "truncated"} <= set(seen), seen

    # what each call must have ended as: the last completion the server delivered for it
    last: dict[str, dict] = {}
    for e in entries:
        if e["delivered"]:
            last[e["client_request_id"]] = e
    reason = {
        cid: {"empty": "empty", "truncated": "truncated", None: None}[e["fault"]]
        for cid, e in last.items()
    }
    assert len(reason) == 60
    n_invalid = sum(r is not None for r in reason.values())
    s = ref.summary
    assert (s["calls"], s["ok"], s["invalid"], s["sent"], s["from_journal"]) == (
        60,
        60 - n_invalid,
        n_invalid,
        60,
        0,
    )
    assert 0 < n_invalid < 60
    assert s["invalid_reasons"] == dict(Counter(r for r in reason.values() if r))
    assert s["http_requests"] == len(
        entries
    )  # every attempt (retries, re-asks) reached the server log
    assert s["cost_usd"] == pytest.approx(
        (s["prompt_tokens"] * 2.0 + s["completion_tokens"] * 6.0) / 1e6
    )
    assert s["prompt_tokens"] > 0 and s["completion_tokens"] > 0

    table = store.read_table(ref).to_pylist()
    statuses = Counter(t["imp_status"] for t in table) + Counter(t["ext_status"] for t in table)
    assert statuses["ok"] == 60 - n_invalid
    assert all((t["imp"] is None) == (t["imp_status"] != "ok") for t in table)
    assert all((t["edit_imp_vs_b"] is None) == (t["imp"] is None) for t in table)

    # a re-run is answered from the published artifact, and the journal alone would answer
    # everything: the server is gone (its port closed) and nothing needs it
    assert run_stage(ANNOTATE, stage_config(url), ctx, {"samples": samples}) == ref
    again = run_stage(
        ANNOTATE, stage_config(url), ctx.model_copy(update={"refresh": True}), {"samples": samples}
    )
    assert again.summary["from_journal"] == 60 and again.summary["sent"] == 0
    assert again.content_hash == ref.content_hash


# --------------------------------------------------------------------------- kill -9 (slow)

STAGE_SCRIPT = """
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from artifacts.refs import ArtifactRef
from sgpo.config import AnnotateStageConfig
from sgpo.core import StageContext, run_stage
from tasks import get_stage
ctx = StageContext.model_validate_json(sys.argv[1])
samples = ArtifactRef.model_validate_json(sys.argv[2])
cfg = AnnotateStageConfig.model_validate_json(sys.argv[3])
print(run_stage(get_stage("annotate"), cfg, ctx, {{"samples": samples}}).model_dump_json())
"""


@pytest.mark.slow
def test_annotate_stage_killed_at_random_moments_resumes_without_loss_or_repayment(tmp_path):
    n_rows, conc = 60, 4  # 120 calls
    faults = FaultConfig(seed=9, rate_429=0.08, retry_after_s=0.01, rate_500=0.08, latency_s=0.1)
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    store = ctx.open_store()
    samples = publish_samples(store, n_rows)
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests")))
    log = tmp_path / "requests.jsonl"
    rng = random.Random(20240607)
    kill_at = sorted(
        rng.sample(range(3, 110), 3)
    )  # journal lines at which to kill, in increasing order

    with serve(log, faults) as url:
        cfg = stage_config(url, max_concurrency=conc)
        journal = journal_path(store, samples, cfg)
        args = [
            sys.executable,
            str(script),
            ctx.model_dump_json(),
            samples.model_dump_json(),
            cfg.model_dump_json(),
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}

        def lines() -> int:
            try:
                return journal.read_bytes().count(b"\n")
            except FileNotFoundError:
                return 0

        runs: list[dict] = []  # per killed run: log entries before and after, journal at the kill
        for threshold in kill_at:
            n_log = len(read_request_log(log))
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            deadline = time.monotonic() + 120
            while lines() < threshold and proc.poll() is None:
                assert time.monotonic() < deadline, "the stage made no progress"
                time.sleep(0.002)
            assert proc.poll() is None, (
                f"finished before the kill: {proc.stderr.read().decode()[-3000:]}"
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            time.sleep(0.3)  # let the server finish (and log) what was in flight at the kill
            runs.append({"log_from": n_log, "journaled": set(LocalJournal(journal).load())})
            assert threshold <= len(runs[-1]["journaled"]) < 2 * n_rows  # killed mid-stage
            assert (
                store.find(ANNOTATE.name, ANNOTATE.cache_key(cfg, {"samples": samples})) is None
            )  # nothing looks finished
        n_log = len(read_request_log(log))
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        resumed = type(samples).model_validate_json(done.stdout.strip().splitlines()[-1])
        final_from = n_log

    # an uninterrupted run, in a store of its own, against a fresh server
    ref_ctx = StageContext(store=StoreConfig(url=str(tmp_path / "ref-store")))
    ref_samples = publish_samples(ref_ctx.open_store(), n_rows)
    assert ref_samples.content_hash == samples.content_hash
    with serve(None, faults) as url:
        reference = run_stage(
            ANNOTATE, stage_config(url, max_concurrency=conc), ref_ctx, {"samples": ref_samples}
        )

    # 1. Nothing lost, nothing changed: the same table (byte-identical Parquet) as without kills.
    assert resumed.content_hash == reference.content_hash
    assert (
        store.read_table(resumed).to_pylist()
        == ref_ctx.open_store().read_table(reference).to_pylist()
    )
    assert resumed.summary["ok"] == reference.summary["ok"] == 2 * n_rows
    assert resumed.summary["from_journal"] == len(runs[-1]["journaled"]) > 0
    assert resumed.summary["prompt_tokens"] == reference.summary["prompt_tokens"]
    assert resumed.summary["cost_usd"] == pytest.approx(reference.summary["cost_usd"])

    # 2. Paid once: a call whose completion was delivered in one run is sent again by a later run
    #    only if that run died before journaling it (at most max_concurrency in flight per kill).
    entries = read_request_log(log)
    bounds = [r["log_from"] for r in runs] + [final_from, len(entries)]
    segments = [entries[a:b] for a, b in zip(bounds, bounds[1:])]
    delivered = [
        {e["client_request_id"] for e in seg if e["delivered"] and e["fault"] is None}
        for seg in segments
    ]
    sent = [{e["client_request_id"] for e in seg} for seg in segments]
    repaid_total = 0
    for i, run in enumerate(runs):
        for j in range(i + 1, len(segments)):
            repaid = delivered[i] & sent[j]
            assert not (repaid & run["journaled"]), "a journaled answer was asked for again"
            assert len(repaid) <= conc
            repaid_total += len(repaid)
    print(
        f"kills at journal lines {kill_at}: journaled {[len(r['journaled']) for r in runs]}, "
        f"answers paid twice (delivered to a killed process before its journal write): {repaid_total}"
    )
    # 3. Each re-run sent only what was not journaled at the kill before it; the last one all of that.
    all_ids = set(LocalJournal(journal).load())
    assert len(all_ids) == 2 * n_rows
    for i, run in enumerate(runs):
        assert not (sent[i + 1] & run["journaled"])
    assert sent[-1] == all_ids - runs[-1]["journaled"]
    for seg in segments:  # within one run, no request body got two completions
        counts = Counter(e["request_hash"] for e in seg if e["delivered"])
        assert [h for h, c in counts.items() if c > 1] == []
