"""The team server, for real on loopback: a Prefect server on PostgreSQL (docs/cluster.md section
1; a throwaway cluster, tests/helpers/postgres.py), an MLflow server, `sgpo deploy` of the pipeline
deployments and the sft stage's from deployments/prefect.yaml, and one process worker on each of the
`cpu` and `cuda` pools, each with its own environment. What is checked lives in the server and the
workers, so nothing here is a stand-in:

* a GPU stage dispatched to the cuda pool shows in the pipeline run while it runs: a task run named
  after the stage, Running, the child flow run's parent, with a progress artifact that follows the
  child's training and ends at 100;
* cancelling the pipeline run while that stage trains ends the pipeline, the stage's task run, the
  child flow run and the child's stage task Cancelled, with no "Crash detected!" in either
  worker's log, and the MLflow runs KILLED, not FAILED;
* a run name typed when the run is created (the UI's Custom-run "Run Name") is kept; a run without
  one is named after its recipe;
* the nightly deployment queues its runs: one at a time, the others wait (AwaitingConcurrencySlot)
  and then run (checked with a short probe flow deployed with the nightly entry's
  `concurrency_limit` block);
* many submissions at once are all accepted (the SQLite-backed server answered 503 "database is
  locked"), and they are rows of the PostgreSQL database.

Several minutes on 2 CPU cores; every process is stopped at the end.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.helpers.cluster import MLFLOW, SERVER, Procs, fill, http_ok, venv_bin, wait_for
from tests.helpers.net import free_port
from tests.helpers.postgres import Postgres

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STAGE = "sft"


def _harness_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API_URL", "PREFECT_UI_", "SGPO_REPO_DIR", "MLFLOW_"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


class Team:
    def __init__(self, tmp: Path, procs: Procs, pg: Postgres, api: str, mlflow: str, env: dict):
        self.tmp, self.procs, self.pg, self.api, self.mlflow, self.env = (
            tmp,
            procs,
            pg,
            api,
            mlflow,
            env,
        )
        self.store = f"file://{tmp}/store"

    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        api = self.api

        class _Ctx:
            def __enter__(self):
                self.settings = temporary_settings(updates={PREFECT_API_URL: api})
                self.settings.__enter__()
                self.client = get_client(sync_client=True)
                return self.client.__enter__()

            def __exit__(self, *exc):
                self.client.__exit__(*exc)
                self.settings.__exit__(*exc)

        return _Ctx()

    def run(self, *argv: str, cwd: Path | None = None, timeout: float = 300) -> str:
        r = subprocess.run(
            [venv_bin(argv[0]), *argv[1:]],
            env=self.env,
            cwd=cwd or REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} log tail:\n{self.procs.log(name)[-5000:]}"
            for name in ("worker-cpu", "worker-cuda")
        )

    def config(self, **extra: str) -> dict:
        """The tiny preset's SFT-only recipe, distributed, on this team's store and MLflow server."""
        from sgpo.config import load_config

        cfg = load_config(
            "tiny",
            [
                "method=sft",
                "execution.mode=distributed",
                f"store.url={self.store}",
                f"tracking.mlflow_uri={self.mlflow}",
                *(f"{k}={v}" for k, v in extra.items()),
            ],
        )
        return cfg.model_dump(mode="json")


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("team")
    procs = Procs(tmp)
    pg = Postgres(procs, free_port())
    base = _harness_env()
    try:
        pg.start()
        db_url = pg.create_database("prefect", "team-secret", "prefect")
        port, mlflow_port = free_port(), free_port()
        api, mlflow = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{mlflow_port}"
        procs.start(
            "server",
            fill(SERVER, "127.0.0.1", str(port)),
            {
                **base,
                "PREFECT_HOME": str(tmp / "server-home"),
                "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                "PREFECT_LOGGING_LEVEL": "WARNING",
            },
        )
        (tmp / "mlflow").mkdir()
        procs.start(
            "mlflow",
            fill(
                MLFLOW,
                "127.0.0.1",
                str(mlflow_port),
                f"sqlite:///{tmp}/mlflow/mlflow.db",
                str(tmp / "mlflow" / "artifacts"),
                extra=("--workers", "1"),
            ),
            {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            cwd=tmp / "mlflow",
        )
        wait_for(lambda: http_ok(f"{api}/health"), 180, "the Prefect server on PostgreSQL")
        wait_for(lambda: http_ok(f"{mlflow}/health"), 180, "the MLflow server")
        env = {**base, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "client-home")}
        t = Team(tmp, procs, pg, api, mlflow, {**env, "SGPO_REPO_DIR": str(REPO)})
        t.deploy_out = t.run(
            "python",
            "-m",
            "sgpo.cli.main",
            "deploy",
            "--config",
            "tiny",
            "--store-url",
            t.store,
            "--mlflow-uri",
            mlflow,
            # deployment names: prefect deploy matches `flow/deployment` against the entrypoint's
            # function name (sgpo_pipeline), not the flow's name (sgpo)
            "--name",
            "sgpo-pipeline",
            "--name",
            "sgpo-nightly-step2",
            "--name",
            f"sgpo-stage-{STAGE}",
            timeout=600,
        )
        with t.client() as client:  # no surprise nightly run if this crosses 02:00 UTC
            client.pause_deployment(client.read_deployment_by_name("sgpo/sgpo-nightly-step2").id)
        for pool in ("cpu", "cuda"):
            procs.start(
                f"worker-{pool}",
                ["prefect", "worker", "start", "--pool", pool, "--type", "process"],
                {
                    **env,
                    "SGPO_REPO_DIR": str(REPO),
                    "PREFECT_HOME": str(tmp / f"{pool}-home"),
                    "SGPO_CACHE_DIR": str(tmp / f"{pool}-cache"),
                    "PREFECT_WORKER_QUERY_SECONDS": "2",
                    "PREFECT_LOGGING_LEVEL": "INFO",
                },
                cwd=tmp,
            )
        yield t
    finally:
        procs.stop_all()
        pg.stop()


def _task_runs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def _stage_children(client, stage: str, since: datetime) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    dep = client.read_deployment_by_name(f"{stage}/sgpo-stage-{stage}")
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id]))
    )
    return [r for r in runs if r.created and r.created >= since]


def _progress(client, task_run_id) -> list:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterTaskRunId,
        ArtifactFilterType,
    )

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(
            task_run_id=ArtifactFilterTaskRunId(any_=[task_run_id]),
            type=ArtifactFilterType(any_=["progress"]),
        )
    )


def _start_pipeline(team: Team, client, **params) -> uuid.UUID:
    dep = client.read_deployment_by_name("sgpo/sgpo-pipeline")
    return client.create_flow_run_from_deployment(dep.id, parameters=params).id


def _final(client, run_id, timeout: float, what: str):
    def done():
        fr = client.read_flow_run(run_id)
        return fr if fr.state and fr.state.is_final() else None

    return wait_for(done, timeout, what, interval=1)


def test_a_dispatched_gpu_stage_shows_in_the_pipeline_run_while_it_runs(team):
    from prefect.client.schemas.objects import StateType

    with team.client() as client:
        since = datetime.now(timezone.utc) - timedelta(seconds=5)
        run_id = _start_pipeline(team, client, config=team.config(), force=[STAGE])
        seen: dict = {"values": []}

        def child_running():
            parent = client.read_flow_run(run_id)
            if parent.state and parent.state.is_final():
                raise AssertionError(f"the pipeline ended first: {parent.state}\n{team.logs()}")
            tasks = [t for t in _task_runs(client, run_id) if t.name == STAGE]
            children = _stage_children(client, STAGE, since)
            if tasks:
                seen["task"] = tasks[0]
                seen["values"] += [a.data for a in _progress(client, tasks[0].id)]
            if tasks and children and children[0].state.type == StateType.RUNNING:
                seen["child"] = children[0]
                return tasks[0].state.type == StateType.RUNNING
            return False

        try:
            wait_for(child_running, 600, "the sft child run to run on the cuda pool", interval=0.5)
        except TimeoutError:
            raise AssertionError(team.logs()) from None
        task, child = seen["task"], seen["child"]
        assert child.parent_task_run_id == task.id  # the child is the stage task's subflow
        done = _final(client, run_id, 600, "the pipeline run")
        assert done.state.type == StateType.COMPLETED, (done.state, team.logs())

        task = client.read_task_run(task.id)
        assert task.state.type == StateType.COMPLETED, task.state
        names = [t.name for t in _task_runs(client, run_id)]
        assert names.count(STAGE) == 1, names  # one task run per dispatched stage, no other
        (mirror,) = _progress(client, task.id)
        assert mirror.key == f"{STAGE}-progress" and mirror.data == 100.0, mirror
        assert mirror.description.startswith(f"{STAGE}: ") and child.name in mirror.description
        assert "/" in mirror.description.split("(")[0], mirror.description  # the child's "n/m done"
        assert any(v < 100 for v in seen["values"]), seen["values"]  # it followed the child


def test_cancelling_the_pipeline_during_a_gpu_stage_is_a_cancel_not_a_crash(team):
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.objects import StateType

    with team.client() as client:
        since = datetime.now(timezone.utc) - timedelta(seconds=5)
        marks = {n: len(team.procs.log(n)) for n in ("worker-cpu", "worker-cuda")}
        run_id = _start_pipeline(team, client, config=team.config(), force=[STAGE])

        def training():
            parent = client.read_flow_run(run_id)
            if parent.state and parent.state.is_final():
                raise AssertionError(f"the pipeline ended first: {parent.state}\n{team.logs()}")
            for child in _stage_children(client, STAGE, since):
                stage_tasks = [t for t in _task_runs(client, child.id) if t.name == STAGE]
                if stage_tasks and stage_tasks[0].state.type == StateType.RUNNING:
                    if _progress(client, stage_tasks[0].id):  # the trainer has started
                        return child
            return None

        try:
            child = wait_for(training, 600, "the sft stage to train on the cuda pool", interval=0.5)
        except TimeoutError:
            raise AssertionError(team.logs()) from None
        team.run("prefect", "flow-run", "cancel", str(run_id))

        parent = _final(client, run_id, 300, "the cancelled pipeline run")
        child = _final(client, child.id, 300, "the cancelled child run")
        logs = {n: team.procs.log(n)[marks[n] :] for n in marks}
        assert parent.state.type == StateType.CANCELLED, (parent.state, logs)
        assert child.state.type == StateType.CANCELLED, (child.state, logs)
        (task,) = [t for t in _task_runs(client, run_id) if t.name == STAGE]
        (child_task,) = [t for t in _task_runs(client, child.id) if t.name == STAGE]
        assert task.state.type == StateType.CANCELLED, task.state
        assert child_task.state.type == StateType.CANCELLED, child_task.state
        for name, text in logs.items():
            assert "Crash detected!" not in text, f"{name}:\n{text[-5000:]}"

    ml = MlflowClient(tracking_uri=team.mlflow)
    exp = ml.get_experiment_by_name("sgpo")
    (run,) = ml.search_runs(
        [exp.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{run_id}'"
    )
    assert run.info.status == "KILLED", run.info
    assert run.data.tags.get("sgpo.ended_by") == "the flow run was cancelled"
    stages = ml.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    trained = [r for r in stages if r.info.run_name == STAGE]
    assert trained and all(r.info.status == "KILLED" for r in trained), [
        (r.info.run_name, r.info.status) for r in stages
    ]


def test_a_typed_run_name_is_kept_and_a_made_up_one_is_replaced_by_the_recipe(team):
    from flows.reporting import run_name
    from sgpo.config import PipelineConfig

    with team.client() as client:
        dep = client.read_deployment_by_name("sgpo/sgpo-pipeline")
        # force=["nope"] fails the run at once, after Prefect named it
        typed = client.create_flow_run_from_deployment(
            dep.id, parameters={"force": ["nope"]}, name="beta-sweep"
        )
        made_up = client.create_flow_run_from_deployment(dep.id, parameters={"force": ["nope"]})
        typed = _final(client, typed.id, 300, "the run with a typed name")
        made_up = _final(client, made_up.id, 300, "the run without a name")
    assert typed.state.is_failed() and made_up.state.is_failed(), (typed.state, made_up.state)
    assert typed.name == "beta-sweep"
    assert made_up.name == run_name(PipelineConfig.model_validate(dep.parameters["config"]))


PROBE = """
import time

from prefect import flow


@flow(name="nightly-probe")
def probe(seconds: float = 4) -> None:
    time.sleep(seconds)
"""


def test_scheduled_runs_queue_one_at_a_time(team):
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled

    nightly = next(
        d
        for d in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "sgpo-nightly-step2"
    )
    with team.client() as client:
        deployed = client.read_deployment_by_name("sgpo/sgpo-nightly-step2")
        assert deployed.schedules, "the nightly deployment has its schedule"
        assert deployed.global_concurrency_limit and deployed.global_concurrency_limit.limit == 1
        assert deployed.concurrency_options.collision_strategy.value == "ENQUEUE"

    # the same `concurrency_limit` block on a flow that takes seconds, run by the cpu worker
    src = team.tmp / "probe"
    src.mkdir()
    (src / "nightly_probe.py").write_text(PROBE)
    (src / "prefect.yaml").write_text(
        textwrap.dedent(f"""\
            name: nightly-probe
            prefect-version: 3.8.8
            build: null
            push: null
            pull:
              - prefect.deployments.steps.set_working_directory:
                  directory: "{src}"
            deployments:
              - name: probe
                entrypoint: nightly_probe.py:probe
                work_pool:
                  name: cpu
            """)
        + textwrap.indent(
            yaml.safe_dump({"concurrency_limit": nightly["concurrency_limit"]}), "    "
        )
    )
    team.run("prefect", "--no-prompt", "deploy", "--all", cwd=src)
    with team.client() as client:
        dep = client.read_deployment_by_name("nightly-probe/probe")
        runs = [
            client.create_flow_run_from_deployment(dep.id, state=Scheduled()).id for _ in range(3)
        ]
        most, waited = 0, set()

        def all_done():
            nonlocal most
            states = [client.read_flow_run(r).state for r in runs]
            most = max(most, sum(s.type == StateType.RUNNING for s in states))
            waited.update(r for r, s in zip(runs, states) if s.name == "AwaitingConcurrencySlot")
            return all(s.is_final() for s in states)

        wait_for(all_done, 300, "the three queued runs", interval=0.3)
        final = [client.read_flow_run(r).state.type for r in runs]
    assert final == [StateType.COMPLETED] * 3, (final, team.logs())
    assert most == 1, most
    assert waited, "no run waited for the slot"


def test_many_submissions_at_once_are_all_accepted_on_postgresql(team):
    """What a team's UIs, schedules and workers do at once: flow runs created and logs written
    concurrently. Each request must succeed (no HTTP 503), and the runs are in PostgreSQL."""
    import httpx

    with team.client() as client:
        dep = client.read_deployment_by_name("sgpo/sgpo-pipeline")
    tag = f"load-{uuid.uuid4().hex[:8]}"
    later = (datetime.now(timezone.utc) + timedelta(days=7)).isoformat()  # no worker runs them

    def submit(i: int) -> int:
        with httpx.Client(base_url=team.api, timeout=60) as http:
            r = http.post(
                f"/deployments/{dep.id}/create_flow_run",
                json={
                    "name": f"{tag}-{i}",
                    "tags": [tag],
                    "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}},
                },
            )
            if r.status_code >= 300:
                return r.status_code
            run_id = r.json()["id"]
            logs = [
                {
                    "name": "load",
                    "level": 20,
                    "message": f"line {n}",
                    "timestamp": datetime.now(timezone.utc).isoformat(),
                    "flow_run_id": run_id,
                }
                for n in range(20)
            ]
            return http.post("/logs/", json=logs).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(submit, range(80)))
    assert all(200 <= c < 300 for c in codes), sorted(codes)
    rows = team.pg.psql(f"select count(*) from flow_run where name like '{tag}-%'", db="prefect")
    assert int(rows) == 80  # the server's database is this PostgreSQL
    assert "database is locked" not in team.procs.log("server")
