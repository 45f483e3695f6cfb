"""A schedule really creates flow runs that a worker completes, on a real Prefect server.

docs/cluster.md's nightly deployment is a `schedules:` entry in prefect.yaml. What makes it run
lives in the server (its scheduler service inserts the scheduled flow runs) and in a process
worker (it picks them up), so this starts both for real on loopback: a prefect.yaml with the
same shape as deployments/prefect.yaml (pull step `set_working_directory`, a process pool) but a
5-second interval schedule and a one-line flow, deployed with `prefect deploy`, then waits for a
flow run created by the scheduler (auto_scheduled, never by this test) to end COMPLETED.

It failed with SQLAlchemy 2.1 under Prefect 3.8.8 (the scheduler's bulk insert raised
`InvalidRequestError: Can't evaluate bulk DML statement` on every loop and no run was ever
created), hence the `sqlalchemy<2.1` pin in pyproject.toml / constraints.txt.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.helpers.cluster import SERVER, Procs, fill, http_ok, venv_bin, wait_for
from tests.helpers.net import free_port

pytestmark = pytest.mark.slow

POOL = "sched-test"

FLOW = """
from prefect import flow


@flow(name="schedule-probe")
def probe() -> int:
    print("schedule-probe ran")
    return 42
"""


def _prefect_yaml(src: str) -> str:
    return textwrap.dedent(f"""\
        name: schedule-probe
        prefect-version: 3.8.8
        build: null
        push: null
        pull:
          - prefect.deployments.steps.set_working_directory:
              directory: "{src}"
        deployments:
          - name: every-5s
            entrypoint: probe_flow.py:probe
            work_pool:
              name: {POOL}
            schedules:
              - interval: 5
                active: true
        """)


def test_interval_schedule_creates_runs_that_a_process_worker_completes(tmp_path):
    import os

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    src = tmp_path / "src"
    src.mkdir()
    (src / "probe_flow.py").write_text(FLOW)
    (src / "prefect.yaml").write_text(_prefect_yaml(str(src)))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env.update(PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    procs = Procs(tmp_path)
    try:
        procs.start(
            "server",
            fill(SERVER, "127.0.0.1", str(port)),
            {
                **base_env,
                "PREFECT_HOME": str(tmp_path / "server-home"),
                "PREFECT_LOGGING_LEVEL": "INFO",
                # the scheduler's loop, every 2 s instead of 60 s (the test waits for it, not for the clock)
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            },
        )
        wait_for(lambda: http_ok(f"{api}/health"), 180, "the Prefect server")
        client_env = {
            **base_env,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "client-home"),
        }
        pool = subprocess.run(
            [venv_bin("prefect"), "work-pool", "create", POOL, "--type", "process"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run(
            [venv_bin("prefect"), "--no-prompt", "deploy", "--all"],
            cwd=src,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        procs.start(
            "worker",
            ["prefect", "worker", "start", "--pool", POOL, "--type", "process"],
            {
                **client_env,
                "PREFECT_HOME": str(tmp_path / "worker-home"),
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_LOGGING_LEVEL": "INFO",
            },
            cwd=tmp_path,
        )

        with (
            temporary_settings(updates={PREFECT_API_URL: api}),
            get_client(sync_client=True) as client,
        ):
            dep = client.read_deployment_by_name("schedule-probe/every-5s")
            assert dep.schedules and dep.schedules[0].active, dep.schedules

            def runs():
                return client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        deployment_id=FlowRunFilterDeploymentId(any_=[dep.id])
                    )
                )

            def server_log() -> str:
                return f"server log tail:\n{procs.log('server')[-4000:]}\nworker log tail:\n{procs.log('worker')[-4000:]}"

            try:
                scheduled = wait_for(runs, 90, "the scheduler to create a flow run", interval=1)
            except TimeoutError:
                raise AssertionError(f"no scheduled flow run was created\n{server_log()}") from None
            assert all(r.auto_scheduled for r in scheduled), [
                (r.name, r.auto_scheduled) for r in scheduled
            ]

            def completed():
                done = [r for r in runs() if r.state and r.state.type == StateType.COMPLETED]
                failed = [
                    r
                    for r in runs()
                    if r.state and r.state.type in (StateType.FAILED, StateType.CRASHED)
                ]
                if failed:
                    raise AssertionError(
                        f"scheduled run {failed[0].name} ended {failed[0].state}\n{server_log()}"
                    )
                return done

            try:
                done = wait_for(
                    completed,
                    180,
                    "a scheduled flow run to complete on the process worker",
                    interval=1,
                )
            except TimeoutError:
                raise AssertionError(
                    f"no scheduled run completed: {[(r.name, r.state) for r in runs()]}\n"
                    f"{server_log()}"
                ) from None
            assert done[0].auto_scheduled and done[0].work_pool_name == POOL
        assert "Can't evaluate bulk DML statement" not in procs.log("server")
        assert f"submitting flow run '{done[0].id}'" in procs.log("worker")
        assert "schedule-probe ran" in procs.log("worker")  # the flow's own output: it really ran
    finally:
        procs.stop_all()
