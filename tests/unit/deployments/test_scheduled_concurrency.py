"""Every scheduled deployment in deployments/prefect.yaml runs one flow run at a time and queues the
next (a 1-minute schedule once started 60 runs side by side); prefect.yaml as Prefect's own deploy
command reads it. tests/integration/test_team_server.py checks the server then really queues runs."""

from __future__ import annotations

from pathlib import Path

import yaml

PREFECT_YAML = Path(__file__).resolve().parents[3] / "deployments" / "prefect.yaml"


def test_every_scheduled_deployment_has_a_queueing_concurrency_limit():
    from prefect.cli.deploy._models import DeploymentConfig

    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    scheduled = [d for d in deployments if d.get("schedules")]
    assert scheduled, "prefect.yaml has a scheduled deployment"
    for d in scheduled:
        limit = DeploymentConfig.model_validate(d).concurrency_limit
        assert limit is not None, f"{d['name']}: no concurrency_limit"
        assert limit.limit == 1 and limit.collision_strategy == "ENQUEUE", (d["name"], limit)
