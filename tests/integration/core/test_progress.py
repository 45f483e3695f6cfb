"""sgpo.core.progress inside a real (ephemeral API) Prefect flow run: the stage's progress artifact
reaches 100 and is linked to its task run. Outside Prefect: tests/unit/core/test_progress.py."""

from __future__ import annotations

import io

from sgpo.core.progress import stage_progress


def test_inside_a_flow_run_a_progress_artifact_reaches_100():
    from prefect import flow, task
    from prefect.artifacts import Artifact

    @task
    def work() -> str:
        p = stage_progress("contract-stage", 5, stream=io.StringIO(), min_interval_s=0)
        for done in range(1, 6):
            p(done, 5)
        return str(p.artifact_id)

    @flow
    def pipeline() -> str:
        return work()

    artifact_id = pipeline()
    latest = Artifact.get("contract-stage-progress", _sync=True)
    assert latest is not None and str(latest.id) == artifact_id
    assert float(latest.data) == 100.0 and latest.type == "progress"
    assert latest.description == "contract-stage: 5/5 done"
    assert latest.task_run_id is not None  # linked to the task run that made it
