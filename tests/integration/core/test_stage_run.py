"""Stages run alone and inside flows the same way; the pipeline judge; training settings reach TRL;
a stage failing on bad input is not retried by Prefect. Decided without a run (batch sizes, the
embedded stand-in LLM, which errors a retry can help): tests/unit/core/test_stage_run.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from artifacts.refs import ArtifactRef
from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

REPO = Path(__file__).resolve().parents[3]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect")}


def _stage_cli(tmp_path: Path, *args: str) -> ArtifactRef:
    """`python -m tasks.NAME ...` in a fresh process; its last stdout line is the ArtifactRef."""
    out = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return ArtifactRef.model_validate_json(out.stdout.strip().splitlines()[-1])


def test_a_stage_run_alone_publishes_what_the_flow_would(tmp_path):
    """base_model, prepare and sft through their CLI entries; then the same sft in-process (as the
    flow's task runs it) finds the CLI's artifact under the same key, and a fresh store gets an
    identical checkpoint."""
    store = tmp_path / "store"
    common = ["tiny", f"store.url={store}", "tracking.enabled=false", "sft.max_steps=1"]
    base = _stage_cli(tmp_path, "tasks.base_model", *common)
    data = _stage_cli(tmp_path, "tasks.prepare", *common, "--section", "data.sft")
    sft = _stage_cli(tmp_path, "tasks.sft", *common, "--base", base.uri, "--data", data.uri)
    assert (sft.stage, sft.kind, sft.produced_by) == ("sft", "model", "cli")
    assert sft.uri.startswith(f"file://{store}/sft/")

    cfg = load_config("tiny", ["sft.max_steps=1"])
    st = get_stage("sft")
    inputs = {"base": base, "data": data}
    assert sft.cache_key == st.cache_key(cfg.sft, inputs)
    again = run_stage(
        st, cfg.sft, StageContext(store=StoreConfig(url=str(store)), run_id="flow-run"), inputs
    )
    assert again == sft  # found, not recomputed (still produced by the CLI run)

    # a second store: the same stage in-process makes a byte-identical checkpoint
    other = StageContext(store=StoreConfig(url=str(tmp_path / "other")), run_id="flow-run")
    base2 = run_stage(get_stage("base_model"), cfg.model, other, {})
    data2 = run_stage(get_stage("prepare"), cfg.data.sft, other, {})
    fresh = run_stage(st, cfg.sft, other, {"base": base2, "data": data2})
    assert (base2.content_hash, data2.content_hash) == (base.content_hash, data.content_hash)
    assert fresh.cache_key == sft.cache_key and fresh.content_hash == sft.content_hash
    assert fresh.produced_by == "flow-run"


def test_stage_cli_errors_name_the_problem(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(tmp_path),
            timeout=120,
        )

    missing = run(
        "tasks.sft",
        "tiny",
        "--base",
        f"file://{tmp_path}/nope",
        "--data",
        f"file://{tmp_path}/nope",
    )
    assert missing.returncode == 2 and "is not a finished artifact" in missing.stderr
    typo = run("tasks.base_model", "tiny", "model.tinyy.seed=1")
    assert typo.returncode == 2 and "model.tinyy" in typo.stderr
    no_input = run("tasks.dpo", "tiny")
    assert no_input.returncode == 2 and "--start" in no_input.stderr
    via_sgpo = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "stage", "dop"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=120,
    )
    assert via_sgpo.returncode == 2 and "unknown stage 'dop'" in via_sgpo.stderr


# ------------------------------------------------------------------------------- the pipeline judge
class MarkerJudge:
    """An OpenAI-compatible judge whose taste is known: an output containing BAD loses, else one
    containing GOOD wins. It answers AlpacaEval's one-token format with logprobs for m / M."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        from sgpo.llm.rule_judge import judge_answer

        with self._lock:
            self.calls += 1
        user = messages[-1]["content"]
        first, second = re.findall(r'"output": """(.*?)"""', user, flags=re.S)
        first_wins = "BAD" in second or ("BAD" not in first and "GOOD" in first)
        return judge_answer(0.9 if first_wins else 0.1, top_logprobs=top_logprobs, prompt_tokens=10)


def test_pipeline_judge_scores_with_the_alpaca_eval_protocol_and_shares_its_journal(
    tmp_path, tiny_model_dir
):
    import pyarrow as pa

    from artifacts.store import ArtifactStore, local_model_ref
    from sgpo.config import PairwiseConfig
    from sgpo.evals.alpaca_eval.preference import official_model_first
    from sgpo.llm.server import build_app, running_server

    rows = [
        {
            "prompt_id": str(i),
            "prompt": f"Question number {i}?",
            "reference": ("GOOD reference answer" if i % 2 else "BAD reference answer") + f" {i}",
        }
        for i in range(8)
    ]
    store = ArtifactStore(str(tmp_path / "store"))
    data = store.publish_table("prepare", "k" * 64, pa.Table.from_pylist(rows), manifest={})
    policy = local_model_ref(tiny_model_dir)
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="r1")
    backend = MarkerJudge()
    with running_server(build_app(backend, model_name="marker-judge")) as url:
        cfg = load_config(
            "tiny",
            [
                "judge.sampling.max_new_tokens=8",
                f"judge.endpoint.base_url={url}",
                "judge.endpoint.model=marker-judge",
                "judge.top_logprobs=2",
            ],
        ).judge
        judged = run_stage(get_stage("judge"), cfg, ctx, {"policy": policy, "data": data})
        table = store.read_table(judged).to_pylist()
        assert backend.calls == 8
        # Identical judgments of the same pairs in another stage come from the shared journal.
        pw = PairwiseConfig(
            name="same_pairs",
            table=judged.uri,
            instruction_column="instruction",
            model_column="output_2",
            baseline_column="output_1",
            prompt="alpaca_eval_clf_v1",
            endpoint=cfg.endpoint,
            top_logprobs=2,
        )
        again = run_stage(get_stage("pairwise"), pw, ctx, {"table": judged})
    assert backend.calls == 8 and again.summary["sent"] == 0 and again.summary["from_journal"] == 8

    # The policy (a random tiny model) never writes BAD or GOOD: it wins exactly the BAD rows.
    for r in table:
        model_wins = r["output_1"].startswith("BAD")
        assert round(r["preference"]) == (2 if model_wins else 1), r
        assert r["is_switched_outputs"] == official_model_first(
            r["instruction"], 0
        )  # upstream's order
        assert r["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and r["judge_status"] == "ok"
    # win rate = 100 * mean(preference - 1); p(winner) = 0.9 per row -> 4 rows at 0.9, 4 at 0.1
    assert judged.summary["win_rate"] == pytest.approx(100 * (4 * 0.9 + 4 * 0.1) / 8, abs=1e-6)
    assert judged.summary["n_labelled"] == 8 and judged.summary[
        "discrete_win_rate"
    ] == pytest.approx(50.0)
    assert (
        json.loads(Path(judged.summary["report_uri"].removeprefix("file://")).read_text())[
            "win_rate"
        ]
        == judged.summary["win_rate"]
    )


# ------------------------------------------------------------------------------- training settings
def test_dpo_settings_reach_trl(monkeypatch, tmp_path, tiny_model_dir):
    """beta, loss type, learning rate and the accumulation steps are what TRL's DPOConfig gets."""
    import trl

    from sgpo.core.tracking import StageTracker
    from sgpo.train.trainers import train_dpo

    seen = {}

    class RecordingDPOTrainer(trl.DPOTrainer):
        def __init__(self, *a, **kw):
            seen["args"] = kw["args"]
            super().__init__(*a, **kw)

    monkeypatch.setattr(trl, "DPOTrainer", RecordingDPOTrainer)
    cfg = load_config(
        "tiny",
        [
            "dpo.beta=0.37",
            "dpo.learning_rate=3e-5",
            "dpo.max_steps=1",
            "dpo.per_device_batch_size=2",
            "dpo.effective_batch_size=8",
        ],
    ).dpo
    pairs = [([{"role": "user", "content": f"q{i}"}], f"good {i}", f"bad {i}") for i in range(8)]
    train_dpo(str(tiny_model_dir), pairs, cfg, tmp_path / "out", tracker=StageTracker(None, None))
    args = seen["args"]
    assert args.beta == 0.37 and args.learning_rate == 3e-5 and list(args.loss_type) == ["sigmoid"]
    assert (
        args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 4
    )  # 8 / (2 x 1 process)
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------- task-level retries


def test_a_stage_failing_on_bad_input_is_not_retried_by_prefect(tmp_path, monkeypatch):
    """prepare declares 2 retries (for a hub that does not answer); a missing local file fails at once."""
    from prefect import flow

    import sgpo.data.sources as ds
    from sgpo.config import DatasetSpec
    from sgpo.core.prefect_tasks import prefect_task

    looked_up = []
    real = ds.local_path
    monkeypatch.setattr(ds, "local_path", lambda spec: looked_up.append(spec.path) or real(spec))
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    spec = DatasetSpec(path=str(tmp_path / "missing.jsonl"))

    @flow(retry_delay_seconds=0)
    def one_stage():
        state = prefect_task(get_stage("prepare"))(inputs={}, cfg=spec, ctx=ctx, return_state=True)
        return state.is_failed(), str(state.result(raise_on_failure=False))

    failed, error = one_stage()
    assert failed and "does not exist" in error
    # one attempt looks the file up once (the stage's own lookup: no Prefect cache-key function);
    # each of the 2 declared retries would add one more
    assert get_stage("prepare").retries == 2 and len(looked_up) == 1
