"""A judge or annotator that answers garbage fails its stage, naming the count, and publishes nothing
(issue 12, item 5); the paid answers stay journaled, so a rerun pays nothing again. `journal_namespace`
re-asks for real (item 12). Real local OpenAI-compatible servers that count requests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers.llm import EchoBackend

REPO = Path(__file__).resolve().parents[3]


class GoodJudge:
    """Answers AlpacaEval's one-token format: 'm' (the first output) with p 0.8, 'M' with 0.2."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        from sgpo.llm.rule_judge import judge_answer

        with self._lock:
            self.calls += 1
        return judge_answer(0.8, top_logprobs=top_logprobs, prompt_tokens=10)


def _manifests(store: Path, stage: str) -> list[Path]:
    return list((store / stage).glob("*/manifest.json")) if (store / stage).exists() else []


def _table(store_dir: Path, rows: list[dict], stage: str = "annotate"):
    from artifacts.store import ArtifactStore

    return ArtifactStore(str(store_dir)).publish_table(
        stage, "t" * 64, pa.Table.from_pylist(rows), manifest={}
    )


PAIR_ROWS = [
    {"prompt": f"Question {i}?", "imp": f"Improved answer {i}.", "policy": f"Policy answer {i}."}
    for i in range(8)
] + [{"prompt": "Same?", "imp": "Identical.", "policy": "Identical."}]


def test_a_garbage_judge_fails_pairwise_and_publishes_nothing(tmp_path):
    from sgpo.config import PairwiseConfig, StoreConfig
    from sgpo.core import StageContext, run_stage
    from sgpo.evals.pairwise import JudgeOutputError
    from sgpo.llm.server import build_app, running_server
    from tasks import get_stage

    store = tmp_path / "store"
    table = _table(store, PAIR_ROWS)
    st = get_stage("pairwise")
    ctx = StageContext(store=StoreConfig(url=str(store)), run_id="r1")
    garbage = EchoBackend()  # its one-token answers have no 'm' / 'M' among the top logprobs
    with running_server(build_app(garbage, model_name="judge")) as url:

        def cfg(**kw):
            return PairwiseConfig(
                name="imp_vs_policy",
                table=table.uri,
                endpoint={"base_url": url, "model": "judge"},
                **kw,
            )

        with pytest.raises(JudgeOutputError, match=r"0 of 8 judge answers had a label") as e:
            run_stage(st, cfg(), ctx, {"table": table})
        assert "pairwise[imp_vs_policy].max_unlabelled_fraction=0.1" in str(e.value)
        assert garbage.calls == 8 and _manifests(store, "pairwise") == []
        # the rerun decides the same from the journal: nothing paid again
        with pytest.raises(JudgeOutputError, match=r"0 of 8"):
            run_stage(st, cfg(), ctx, {"table": table})
        assert garbage.calls == 8
        # accepting them (a runtime setting: same key, same journal) publishes without paying again
        accepted = run_stage(st, cfg(max_unlabelled_fraction=1.0), ctx, {"table": table})
        assert (
            garbage.calls == 8
            and accepted.summary["sent"] == 0
            and accepted.summary["n_labelled"] == 1
        )
        assert accepted.summary["win_rate"] is not None  # only the identical pair: 50
    good = GoodJudge()
    with running_server(build_app(good, model_name="judge")) as url:
        # the endpoint fixed: plain reruns reuse the journaled verdicts (cached), a fresh namespace re-asks
        again = run_stage(
            st,
            PairwiseConfig(
                name="imp_vs_policy",
                table=table.uri,
                max_unlabelled_fraction=1.0,
                endpoint={"base_url": url, "model": "judge"},
            ),
            ctx,
            {"table": table},
        )
        assert again == accepted and good.calls == 0
        fresh = run_stage(
            st,
            PairwiseConfig(
                name="imp_vs_policy",
                table=table.uri,
                journal_namespace="fresh-1",
                endpoint={"base_url": url, "model": "judge"},
            ),
            ctx,
            {"table": table},
        )
    assert good.calls == 8 and fresh.summary["sent"] == 8 and fresh.summary["n_labelled"] == 9
    assert fresh.cache_key != accepted.cache_key
    from artifacts.store import ArtifactStore

    assert (
        ArtifactStore(str(store)).read_manifest(fresh)["config"]["journal_namespace"] == "fresh-1"
    )


def test_a_garbage_judge_fails_the_pipeline_judge_and_alpaca_eval(tmp_path, tiny_model_dir):
    from artifacts.store import local_model_ref
    from sgpo.config import AlpacaEvalJudgeConfig, StoreConfig, load_config
    from sgpo.core import StageContext, run_stage
    from sgpo.evals.pairwise import JudgeOutputError
    from sgpo.llm.server import build_app, running_server
    from tasks import get_stage

    store = tmp_path / "store"
    ctx = StageContext(store=StoreConfig(url=str(store)), run_id="r1")
    data = _table(
        store,
        [
            {"prompt_id": str(i), "prompt": f"Question {i}?", "reference": f"Reference {i}."}
            for i in range(5)
        ],
        stage="prepare",
    )
    answers = _table(
        store,
        [
            {
                "instruction": f"Question {i}?",
                "baseline_output": f"Baseline {i}.",
                "baseline_generator": "base",
                "dataset": "d",
                "output": f"Output {i}.",
                "generator": "m",
                "index": i,
            }
            for i in range(6)
        ],
        stage="alpaca_eval_generate",
    )
    garbage = EchoBackend()
    with running_server(build_app(garbage, model_name="judge")) as url:
        cfg = load_config(
            "tiny",
            [
                "judge.sampling.max_new_tokens=4",
                f"judge.endpoint.base_url={url}",
                "judge.endpoint.model=judge",
            ],
        ).judge
        with pytest.raises(JudgeOutputError, match=r"judge: 0 of 5 judge answers had a label"):
            run_stage(
                get_stage("judge"),
                cfg,
                ctx,
                {"policy": local_model_ref(tiny_model_dir), "data": data},
            )
        ae = AlpacaEvalJudgeConfig(
            endpoint={"base_url": url, "model": "judge"},
            instruction_difficulty="none",
            gamed_annotations="none",
        )
        with pytest.raises(
            JudgeOutputError, match=r"alpaca_eval: 0 of 6 judge answers had a label"
        ):
            run_stage(get_stage("alpaca_eval_judge"), ae, ctx, {"answers": answers})
    assert garbage.calls == 11
    assert _manifests(store, "judge") == [] and _manifests(store, "alpaca_eval_judge") == []


def test_a_judge_without_verdicts_fails_arena_hard(tmp_path):
    from sgpo.config import ArenaHardJudgeConfig, StoreConfig
    from sgpo.core import StageContext, run_stage
    from sgpo.evals.pairwise import JudgeOutputError
    from sgpo.llm.server import build_app, running_server
    from tasks import get_stage

    store = tmp_path / "store"
    answers = _table(
        store,
        [
            {
                "question_id": f"q{i}",
                "model_id": "m",
                "baseline_model": "gpt-4-0314",
                "category": "c",
                "question": f"Q{i}?",
                "answer": f"A{i}.",
                "baseline_answer": f"B{i}.",
            }
            for i in range(3)
        ],
        stage="arena_hard_generate",
    )
    garbage = EchoBackend()  # never writes a [[A>B]] verdict
    with running_server(build_app(garbage, model_name="judge")) as url:
        cfg = ArenaHardJudgeConfig(
            endpoint={"base_url": url, "model": "judge"}, judge_max_tokens=64
        )
        ctx = StageContext(store=StoreConfig(url=str(store)), run_id="r1")
        with pytest.raises(
            JudgeOutputError, match=r"arena_hard: 0 of 6 judge answers had a verdict label"
        ):
            run_stage(get_stage("arena_hard_judge"), cfg, ctx, {"answers": answers})
    assert garbage.calls == 12  # 3 questions x 2 games x 2 turns (the follow-up asks for the label)
    assert _manifests(store, "arena_hard_judge") == []


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(REPO),
    }


def test_annotation_without_usable_answers_fails_and_a_fresh_namespace_re_asks(tmp_path):
    from sgpo.llm.server import FaultConfig, build_app, read_request_log, running_server

    store = tmp_path / "store"
    samples = _table(
        store,
        [
            {
                "prompt_id": str(i),
                "prompt": f"Explain {i}.",
                "reference": f"Ref {i}.",
                "policy": f"Pol {i}.",
            }
            for i in range(4)
        ],
        stage="sample",
    )

    def annotate(url: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "tasks.annotate",
                "tiny",
                f"store.url={store}",
                "tracking.enabled=false",
                f"annotate.endpoint.base_url={url}",
                "annotate.endpoint.model=fake",
                "annotate.endpoint.max_retries=0",
                *extra,
                "--samples",
                samples.uri,
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(tmp_path),
            timeout=300,
        )

    empty = FaultConfig(rate_empty=1.0, max_faults_per_request=100)  # every answer is empty
    log_bad, log_good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    with running_server(
        build_app(EchoBackend(), model_name="fake", faults=empty, request_log=log_bad)
    ) as bad:
        out = annotate(bad)
        assert out.returncode == 1
        assert "annotate: 0 of 8 answers were usable (invalid: {'empty': 8})" in out.stderr, (
            out.stderr[-2000:]
        )
        assert "annotate.min_usable_fraction=0.5" in out.stderr
        n_paid = len(read_request_log(log_bad))
        assert n_paid == 8 * 3  # each call asked 1 + max_invalid_retries (2) times
        assert _manifests(store, "annotate") == []
    with running_server(build_app(EchoBackend(), model_name="fake", request_log=log_good)) as good:
        # the endpoint fixed: a plain rerun pays nothing again (and says why it fails) ...
        again = annotate(good)
        assert again.returncode == 1 and "0 of 8 answers were usable" in again.stderr
        assert read_request_log(log_good) == [] and len(read_request_log(log_bad)) == n_paid
        # ... a fresh journal namespace really re-asks
        fresh = annotate(good, "annotate.journal_namespace=fresh-1")
        assert fresh.returncode == 0, fresh.stderr[-2000:]
        assert len(read_request_log(log_good)) == 8
        assert re.search(
            r"\[sgpo\] annotate ran \(0 answers from the journal, 8 sent\)", fresh.stderr
        ), fresh.stderr
        # and --force without a new namespace: runs, but sends nothing (and says so)
        forced = annotate(good, "annotate.journal_namespace=fresh-1", "--force")
        assert forced.returncode == 0 and len(read_request_log(log_good)) == 8
        assert "[sgpo] annotate ran (8 answers from the journal, 0 sent)" in forced.stderr, (
            forced.stderr[-2000:]
        )
    manifests = _manifests(store, "annotate")
    assert len(manifests) == 1 and '"journal_namespace": "fresh-1"' in manifests[0].read_text()
