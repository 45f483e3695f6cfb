"""MLflow across retries of one Prefect flow run (a real MLflow store on SQLite): the second
attempt logs into the first attempt's parent run, and a stage run the first attempt left
RUNNING (its process was killed) is ended KILLED; another flow run gets its own parent."""

from __future__ import annotations

from sgpo.core.tracking import TrackingHandle, _client, stage_run, start_pipeline_run


def test_a_retry_reuses_the_parent_run_and_kills_the_stale_stage_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = start_pipeline_run(
        uri,
        "sgpo",
        "tiny-abc",
        artifact_root=str(tmp_path / "mlruns"),
        tags={"prefect.flow_run_id": "run-1"},
    )
    client = _client(first.uri)
    with stage_run(first, "sft"):
        pass
    killed = client.create_run(
        first.experiment_id,
        run_name="dpo",
        tags={"mlflow.parentRunId": first.parent_run_id, "sgpo.core.stage": "dpo"},
    )  # never ended
    client.set_terminated(first.parent_run_id, status="FAILED")

    second = start_pipeline_run(
        uri, "sgpo", "tiny-abc", artifact_root=None, tags={"prefect.flow_run_id": "run-1"}
    )
    assert second.parent_run_id == first.parent_run_id
    assert client.get_run(first.parent_run_id).info.status == "RUNNING"
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    sft = [
        r
        for r in client.search_runs(
            [first.experiment_id], filter_string="tags.`sgpo.core.stage` = 'sft'"
        )
    ]
    assert [r.info.status for r in sft] == ["FINISHED"]  # a finished stage run stays as it was

    other = start_pipeline_run(
        uri, "sgpo", "tiny-abc", artifact_root=None, tags={"prefect.flow_run_id": "run-2"}
    )
    assert isinstance(other, TrackingHandle) and other.parent_run_id != first.parent_run_id
    parents = client.search_runs(
        [first.experiment_id], filter_string="tags.`prefect.flow_run_id` = 'run-1'"
    )
    assert len(parents) == 1
