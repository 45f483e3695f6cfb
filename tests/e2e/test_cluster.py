"""docs/cluster.md, walked from scratch on loopback: the ```bash blocks of its sections 1-6 run as
written, in order (tests/helpers/cluster.py: plan_walk / DocWalk, with an explicit table of the
doc's placeholders -> this machine and a reviewed list of lines skipped here, each with its reason).
That starts a Prefect server, creates the bucket on S3 (moto's server stands in for MinIO), starts
an MLflow server, runs `sgpo deploy` (preset tiny instead of qwen2.5-7b), one process worker per
pool with the environment its block exports, and the tiny pipeline through section 6's CLI,
`prefect deployment run sgpo/sgpo-pipeline`. A doc line the walker does not know fails the test.

Checked: every GPU stage ran as its own flow run of its deployment on the cuda pool (picked up
by the cuda worker, linked to the pipeline run as a subflow), the CPU stages ran in the pipeline
run on the cpu worker, artifacts and MLflow runs landed in the bucket / tracking server. Then a
GPU job dies mid-stage (its process is killed, as a preempted node would be): the child is
Crashed, the pipeline Failed with a message naming the stage and the child run; a Retry of the
pipeline run with section 7's `prefect flow-run retry <id>` dispatches only the failed stage,
then the stages after it.

Several minutes on 2 CPU cores; every process is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.cluster import (
    REPO,
    DocWalk,
    Procs,
    doc_retry_command,
    http_ok,
    kill_tree,
    wait_for,
)
from tests.helpers.net import free_port
from tests.helpers.postgres import Postgres

pytestmark = pytest.mark.slow

# GPU stages dispatched here; the judge is one too, but its endpoint is the embedded stand-in on this
# machine's loopback, so it runs in the pipeline's process (flows/dispatch.py)
GPU = ("sft", "sample", "ppl_filter", "improver_sft", "pairs", "ref_logps", "dpo")
LINE = re.compile(r"\[sgpo\] (\S+)\s+(ran|cached)\s")


# The harness's own environment, not the doc's: what a fresh machine has before the doc's exports.
# Everything the doc is meant to provide (store credentials and endpoint, API URL, repo dir) is removed.
_DOC_PROVIDES = (
    "AWS_",
    "MLFLOW_",
    "PREFECT_API_URL",
    "PREFECT_UI_API_URL",
    "SGPO_REPO_DIR",
    "SGPO_STORE_URL",
    "SGPO_MLFLOW_URI",
)


def _harness_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DOC_PROVIDES)}
    # `pip install -e .` put prefect, mlflow, sgpo and python on the machines' PATH: here, this venv's
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint):
    tmp = tmp_path_factory.mktemp("cluster")
    procs = Procs(tmp)
    # section 1's database server, which the doc installs with apt-get: a throwaway cluster of it
    pg = Postgres(procs, free_port()).start()
    api_port, mlflow_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}/api"
    bucket = f"sgpo-walk-{uuid.uuid4().hex[:8]}"
    values = {
        "api_port": str(api_port),
        "mlflow_port": str(mlflow_port),
        "pg_port": str(pg.port),
        "s3": s3_endpoint,
        "repo": str(REPO),
        "mlflow_dir": str(tmp / "mlflow"),
        "bucket": bucket,
    }

    def machine_env(machine: str) -> dict[str, str]:
        """Per machine: its own Prefect home and cache (separate machines share neither), log levels the
        assertions read, and a 2 s work-pool poll instead of 10 s."""
        env = {
            "PREFECT_HOME": str(tmp / f"{machine}-home"),
            "SGPO_CACHE_DIR": str(tmp / f"cache-{machine}"),
            "PREFECT_LOGGING_LEVEL": "WARNING" if machine == "prefect-host" else "INFO",
        }
        if machine.endswith("-machine"):
            env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
        return env

    ready = {
        "server": lambda: http_ok(f"{api}/health"),
        "mlflow": lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"),
    }
    try:
        walk = DocWalk(procs, tmp, values, _harness_env(), machine_env, ready).run()
        out = walk.results["deployment-run"].stdout
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert run_id, out
        yield {
            "api": api,
            "tmp": tmp,
            "procs": procs,
            "s3": s3_endpoint,
            "bucket": bucket,
            "store": f"s3://{bucket}/store",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "env": walk.envs["operator"],
            "deploy_out": walk.results["deploy"].stdout,
            "run_id": uuid.UUID(run_id.group(1)),
            "pg": pg,
        }
    finally:
        procs.stop_all()
        pg.stop()


def _client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

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


def _runs_of(client, deployment_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    )


def parent_task_runs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def _manifests(s3: str, bucket: str) -> dict[str, list[str]]:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3)
    fs.invalidate_cache()
    out: dict[str, list[str]] = {}
    for path in fs.glob(f"{bucket}/store/*/*/manifest.json"):
        out.setdefault(path.split("/")[-3], []).append(path)
    return out


def _wait_final(client, run_id, timeout: float, what: str):
    def final():
        fr = client.read_flow_run(run_id)
        return fr if fr.state and fr.state.is_final() else None

    return wait_for(final, timeout, what, interval=2)


def test_distributed_pipeline_on_cpu_and_cuda_pools_then_crash_and_retry(cluster):
    from prefect.client.schemas.objects import StateType

    procs: Procs = cluster["procs"]
    assert (
        "work pool cpu: created" in cluster["deploy_out"]
        and "work pool cuda: created" in cluster["deploy_out"]
    )
    with _client(cluster["api"]) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        assert pools["cpu"].type == pools["cuda"].type == "process"
        assert "TOKENIZERS_PARALLELISM" in json.dumps(pools["cuda"].base_job_template)
        deployments = {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()
        }
        stage_deps = {s: deployments[f"{s}/sgpo-stage-{s}"] for s in GPU}
        assert all(d.work_pool_name == "cuda" for d in stage_deps.values())
        pipeline = deployments["sgpo/sgpo-pipeline"]
        assert pipeline.work_pool_name == "cpu"
        # the default config comes from `sgpo deploy` (a Prefect Variable over configs/tiny.yaml)
        assert pipeline.parameters["config"]["execution"]["mode"] == "distributed"
        assert pipeline.parameters["config"]["store"]["url"] == cluster["store"]
        nightly = deployments["sgpo/sgpo-nightly-step2"]
        assert (
            nightly.parameters["config"]["rounds"] == 2
            and nightly.schedules[0].schedule.cron == "0 2 * * *"
        )
        client.pause_deployment(nightly.id)  # no surprise run if this test crosses 02:00 UTC
        assert f"from {REPO / 'deployments' / 'prefect.yaml'}" in cluster["deploy_out"], cluster[
            "deploy_out"
        ]

        # section 6's `prefect deployment run sgpo/sgpo-pipeline`: a flow run with the default parameters
        parent = client.read_flow_run(cluster["run_id"])
        assert parent.deployment_id == pipeline.id, parent

        # A GPU job dies during dpo (a preempted node): kill the child's process.
        def logs() -> str:
            return (
                f"cpu worker log tail:\n{procs.log('worker-cpu')[-6000:]}\n"
                f"cuda worker log tail:\n{procs.log('worker-cuda')[-6000:]}"
            )

        def dpo_running():
            state = client.read_flow_run(parent.id).state
            if state and state.is_final():
                raise AssertionError(
                    f"the pipeline ended before dpo started: {state.type.value}: {state.message}\n{logs()}"
                )
            runs = [
                r
                for r in _runs_of(client, stage_deps["dpo"].id)
                if r.state and r.state.type == StateType.RUNNING
            ]
            return runs[0] if runs and runs[0].infrastructure_pid else None

        try:
            victim = wait_for(
                dpo_running,
                900,
                "the dpo stage's flow run to start on the cuda worker",
                interval=0.5,
            )
        except TimeoutError:
            raise AssertionError(
                f"pipeline state: {client.read_flow_run(parent.id).state}\n{logs()}"
            ) from None
        # the pipeline run lists the dispatched stage as its task run, Running, the child's parent
        (shown,) = [r for r in parent_task_runs(client, parent.id) if r.name == "dpo"]
        assert shown.state.type == StateType.RUNNING and victim.parent_task_run_id == shown.id
        killed = kill_tree(int(str(victim.infrastructure_pid).rsplit(":", 1)[-1]))
        failed = _wait_final(client, parent.id, 300, "the pipeline run to fail")
        assert failed.state.type == StateType.FAILED, failed.state
        crashed = client.read_flow_run(victim.id)
        assert crashed.state.type == StateType.CRASHED, (crashed.state, killed)
        message = failed.state.message or ""
        assert "dpo" in message or "dpo" in procs.log("worker-cpu"), message

        # -------- what the first attempt did
        for stage in GPU:
            runs = _runs_of(client, stage_deps[stage].id)
            assert len(runs) == 1, (stage, runs)
            (run,) = runs
            assert run.work_pool_name == "cuda"
            submitted = f"submitting flow run '{run.id}'"  # the worker's own log line
            assert submitted in procs.log("worker-cuda") and submitted not in procs.log(
                "worker-cpu"
            )
            assert run.parent_task_run_id is not None  # a subflow of the pipeline run
            assert client.read_task_run(run.parent_task_run_id).flow_run_id == parent.id
            if stage != "dpo":
                assert run.state.type == StateType.COMPLETED, (stage, run.state)
        submitted = f"submitting flow run '{parent.id}'"
        assert submitted in procs.log("worker-cpu") and submitted not in procs.log("worker-cuda")
        for stage in (
            "base_model",
            "prepare",
            "annotate",
        ):  # CPU stages: tasks of the pipeline run (cpu worker)
            assert any(
                r.name.split("[")[0] == stage for r in parent_task_runs(client, parent.id)
            ), stage
        stored = _manifests(cluster["s3"], cluster["bucket"])
        assert set(stored) == {
            "base_model",
            "prepare",
            "sft",
            "sample",
            "annotate",
            "ppl_filter",
            "improver_sft",
            "pairs",
            "ref_logps",
        }
        first_lines = len(procs.log("worker-cpu").splitlines())

        # -------- Retry (the UI's Retry button; here section 7's CLI, `prefect flow-run retry <id>`)
        prefect, *args = doc_retry_command()
        retry = subprocess.run(
            [str(Path(sys.executable).parent / prefect), *args, str(parent.id)],
            env=cluster["env"],
            cwd=cluster["tmp"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert retry.returncode == 0, retry.stdout + retry.stderr
        wait_for(
            lambda: not client.read_flow_run(parent.id).state.is_final(),
            60,
            "the retry to be scheduled",
        )
        done = _wait_final(client, parent.id, 600, "the retried pipeline run")
        assert done.state.type == StateType.COMPLETED, (done.state, procs.log("worker-cpu")[-5000:])

        for stage in GPU:
            runs = _runs_of(client, stage_deps[stage].id)
            if stage == "dpo":  # only the failed stage was dispatched again
                assert sorted(r.state.type.value for r in runs) == ["COMPLETED", "CRASHED"], runs
            else:
                assert len(runs) == 1, (stage, runs)
        status = dict(LINE.findall("\n".join(procs.log("worker-cpu").splitlines()[first_lines:])))
        # the failed stage and what comes after it in the plan: prepare[eval] (made right before the judge
        # that reads it), the judge, and the run's report
        assert {s for s, v in status.items() if v == "ran"} == {
            "dpo",
            "prepare[eval]",
            "judge",
            "report",
        }, status
        assert all(
            status[s] == "cached"
            for s in (
                "base_model",
                "sft",
                "sample",
                "annotate",
                "ppl_filter",
                "improver_sft",
                "pairs",
                "ref_logps",
            )
        ), status

        assert any(r.name == "judge" for r in parent_task_runs(client, parent.id))
        # GPU stages never run in-process: a dispatched one is a task run named after it (the first
        # attempt's), a cached one (found in the store, nothing dispatched) a task run in the Cached
        # state, so the retried run's graph still has every stage; dpo has one task run per attempt
        shown: dict[str, list[str]] = {}
        for r in parent_task_runs(client, parent.id):
            if r.name in GPU:
                shown.setdefault(r.name, []).append(r.state.name)
        assert {k: sorted(v) for k, v in shown.items()} == {
            **{s: ["Cached", "Completed"] for s in GPU if s != "dpo"},
            "dpo": ["Completed", "Failed"],
        }, shown

    stored = _manifests(cluster["s3"], cluster["bucket"])
    assert {"dpo", "judge"} <= set(stored) and all(
        len(v) == 1 for k, v in stored.items() if k != "prepare"
    )

    # MLflow server: the pipeline's parent run with nested stage runs (logged from both workers)
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=cluster["mlflow"])
    exp = ml.get_experiment_by_name("sgpo")
    runs = ml.search_runs([exp.experiment_id], max_results=200)
    assert any(r.data.tags.get("prefect.flow_run_id") == str(parent.id) for r in runs)
    assert len(runs) > 5
