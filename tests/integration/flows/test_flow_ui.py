"""What a user of the Prefect UI sees of a flow run, checked on real (ephemeral API) flow runs:
a misspelt `force` refused with the CLI's sentence, and runs named recipe + short config hash."""

from __future__ import annotations

import pytest

from flows.pipeline import FORCEABLE, check_force
from sgpo.cli import main as cli


def _expected(known: tuple[str, ...]) -> str:
    with pytest.raises(ValueError) as e:
        check_force(["dop"], known)
    return str(e.value)


def _flow_run(state):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def test_force_typo_same_sentence_from_cli_and_flows(tmp_path, monkeypatch, capsys):
    from flows.evaluate import evaluate
    from flows.pipeline import sgpo_pipeline
    from flows.reporting import run_name
    from sgpo.config import load_config, load_evaluation_config
    from tasks import EVALUATION_STAGES

    monkeypatch.chdir(tmp_path)
    msg = _expected(FORCEABLE)
    assert "'dop'" in msg and "dpo" in msg
    assert cli.main(["run", "tiny", "--force", "dop"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"sgpo: {msg}"
    )  # the CLI prints the flow's sentence, nothing more

    cfg = load_config("tiny", [f"store.url=file://{tmp_path}/store"])
    state = sgpo_pipeline(
        config=cfg, force=["dop"], return_state=True
    )  # as the UI's Custom-run form sends it
    assert state.is_failed()
    with pytest.raises(ValueError) as e:
        state.result()
    assert str(e.value) == msg
    run = _flow_run(state)
    assert (
        run.name == run_name(cfg)
        and run.name.startswith("sgpo-tiny-")
        and len(run.name.split("-")[-1]) == 8
    )

    emsg = _expected(EVALUATION_STAGES)  # report is among them (the registry)
    assert cli.main(["evaluate", "--force", "dop"]) == 2
    assert capsys.readouterr().err.strip() == f"sgpo: {emsg}"
    ecfg = load_evaluation_config(None, [f"store.url=file://{tmp_path}/store"])
    state = evaluate(config=ecfg, force=["dop"], return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError) as e:
        state.result()
    assert str(e.value) == emsg
    assert _flow_run(state).name == run_name(ecfg)


def test_flow_run_name_without_config_parameter_is_the_default_recipe():
    from flows.pipeline import sgpo_pipeline
    from flows.reporting import run_name
    from sgpo.config import load_config

    state = sgpo_pipeline(
        force=["nope"], return_state=True
    )  # fails at once, after the run is named
    assert _flow_run(state).name == run_name(load_config("tiny"))


# ------------------------------------------------ table artifacts per benchmark, cached stages shown
ALPACA = {
    "win_rate": 52.34567,
    "standard_error": 1.23456,
    "discrete_win_rate": 51.0,
    "lc_win_rate": 48.8888,
    "lc_standard_error": 0.98765,
    "n_labelled": 805,
    "baseline": "gpt4_1106_preview",
}
ARENA = {"score": 33.3333, "ci_low": 30.1111, "ci_high": 36.6666, "n_questions": 500}


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def test_benchmark_tables_and_cached_stages_read_back_from_the_api(tmp_path, monkeypatch):
    import json

    from prefect import flow

    import flows.runner as runner_mod
    from artifacts.refs import ArtifactRef
    from flows.reporting import publish_benchmark_tables
    from flows.runner import StageRunner
    from sgpo.config import SFTStageConfig, StoreConfig
    from sgpo.core import StageContext
    from tasks import get_stage

    uri = f"file://{tmp_path}/store/sft/abc"
    ref = ArtifactRef(
        uri=uri,
        kind="model",
        stage="sft",
        cache_key="k" * 64,
        content_hash="c" * 64,
        produced_by="run-1",
    )
    monkeypatch.setattr(
        runner_mod, "dispatch_stage", lambda label, *a: (ref, label == "sft", "")
    )  # sft cached, dpo ran

    @flow
    def judged_run():
        ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")), tracking=None)
        run = StageRunner(ctx, [])
        run("sft", get_stage("sft"), SFTStageConfig())
        run("dpo", get_stage("sft"), SFTStageConfig())
        return publish_benchmark_tables(
            {"alpaca-eval": ALPACA, "arena-hard": ARENA, "mt-bench": {"score": None}}
        )

    state = judged_run(return_state=True)
    assert state.result() == ["sgpo-bench-alpaca-eval", "sgpo-bench-arena-hard"]
    arts = _artifacts(state.state_details.flow_run_id)
    tables = {a.key: a for a in arts if a.type == "table"}
    assert set(tables) == {"sgpo-bench-alpaca-eval", "sgpo-bench-arena-hard"}
    data = tables["sgpo-bench-alpaca-eval"].data
    rows = json.loads(data) if isinstance(data, str) else data
    assert (
        rows[0]["metric"] == "win rate (%)" and rows[0]["value"] == 52.35 and rows[0]["SE"] == 1.23
    )
    assert "gpt4_1106_preview" in tables["sgpo-bench-alpaca-eval"].description
    links = [
        a for a in arts if a.type in ("link", "markdown")
    ]  # Prefect 3.8 stores a link artifact as Markdown
    assert len(links) == 1  # the cached sft only; dpo ran and has its own run
    assert (
        uri in links[0].data
        and "sft (cached)" in links[0].data
        and "cached" in links[0].description
    )


def test_a_gpu_stage_found_in_the_store_shows_as_a_cached_task_run_with_its_artifact_link():
    """Distributed mode dispatches nothing for a GPU stage already in the store; the run's graph and Task
    Runs tab still show it: a task run named after the stage, in the Cached state, with a link artifact."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterTaskRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from artifacts.refs import ArtifactRef
    from flows.dispatch import show_cached_task

    ref = ArtifactRef(
        stage="dpo",
        cache_key="k" * 16,
        uri="file:///s/dpo/kkkk",
        content_hash="c" * 64,
        kind="model",
        produced_by="an-earlier-run",
    )

    @flow
    def pipeline_like():
        show_cached_task("dpo[2]", ref)

    state = pipeline_like(return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        (tr,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
        assert (
            tr.name == "dpo[2]" and tr.state.type.value == "COMPLETED" and tr.state.name == "Cached"
        )
        (link,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[tr.id]))
        )
        assert link.type == "markdown"  # how Prefect 3 stores a link artifact
        assert "file:///s/dpo/kkkk" in str(link.data) and "an-earlier-run" in (
            link.description or ""
        )
    show_cached_task("dpo", ref)  # outside a flow run: nothing to attach to, and no error
