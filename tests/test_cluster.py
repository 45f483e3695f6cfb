"""The team setup for real, on loopback: a Prefect server, S3 (moto's server), an MLflow server,
`sgpo deploy`, a process worker for pool `cpu` and one for `cuda`, the tiny pipeline started
through the API the way the UI's Run button does, with `execution.mode: distributed`.

Checked: every GPU stage ran as its own flow run of its deployment on the cuda pool (picked up
by the cuda worker, linked to the pipeline run as a subflow), the CPU stages ran in the pipeline
run on the cpu worker, artifacts and MLflow runs landed in the bucket / tracking server. Then a
GPU job dies mid-stage (its process is killed, as a preempted node would be): the child is
Crashed, the pipeline Failed with a message naming the stage and the child run; a Retry of the
pipeline run (what the UI's Retry button does) dispatches only the failed stage, then the judge.

The same commands as docker/compose.yaml (tests/cluster_helpers.py; test_deployments.py checks).
Several minutes on 2 CPU cores; every process is stopped at the end.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster_helpers import (DEPLOY, MLFLOW, REPO, SERVER, WORKER_CPU, WORKER_CUDA, Procs, fill, http_ok, kill_tree,
                             venv_bin, wait_for)
from conftest import free_port

pytestmark = pytest.mark.slow

GPU = ("sft", "sample", "ppl_filter", "improver_sft", "pairs", "dpo", "judge")
LINE = re.compile(r"\[sgpo\] (\S+)\s+(ran|cached)\s")


def _deploy_argv() -> list[str]:
    """`sgpo deploy` once the CLI has it; the same code as a module until then."""
    from sgpo.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "deploy" in sub.choices:
        argv = fill(DEPLOY)
        return [venv_bin(argv[0]), *argv[1:]]  # the venv's own `sgpo`: the venv need not be on PATH
    return [sys.executable, "-m", "sgpo.deploy"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint):
    tmp = tmp_path_factory.mktemp("cluster")
    procs = Procs(tmp)
    api_port, mlflow_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}/api"
    prefix = f"cluster-{uuid.uuid4().hex[:8]}"
    base_env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "AWS_ENDPOINT_URL")}
    base_env.update(PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    try:
        procs.start("server", fill(SERVER, "127.0.0.1", str(api_port)),
                    {**base_env, "PREFECT_HOME": str(tmp / "server-home"), "PREFECT_LOGGING_LEVEL": "WARNING"})
        procs.start("mlflow", fill(MLFLOW, "127.0.0.1", str(mlflow_port), f"sqlite:///{tmp}/mlflow.db",
                                   f"s3://sgpo-test/{prefix}/mlflow", extra=("--workers", "1")),
                    {**base_env, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                    cwd=tmp)
        wait_for(lambda: http_ok(f"{api}/health"), 180, "the Prefect server")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 180, "the MLflow server")

        client_env = {**base_env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "client-home")}
        store_url = f"s3://sgpo-test/{prefix}/store"
        deploy = subprocess.run(
            [*_deploy_argv(), "--config", "tiny", "--store-url", store_url,
             "--mlflow-uri", f"http://127.0.0.1:{mlflow_port}",
             "--set", "store.storage_options=" + json.dumps({"endpoint_url": s3_endpoint})],
            env=client_env, cwd=tmp, capture_output=True, text=True, timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr

        for pool, template in (("cpu", WORKER_CPU), ("cuda", WORKER_CUDA)):
            procs.start(f"worker-{pool}", fill(template), {
                **client_env, "PREFECT_HOME": str(tmp / f"worker-{pool}-home"), "PREFECT_LOGGING_LEVEL": "INFO",
                "PREFECT_WORKER_QUERY_SECONDS": "2", "SGPO_REPO_DIR": str(REPO),
                "SGPO_CACHE_DIR": str(tmp / f"cache-{pool}"),
            }, cwd=tmp)
        yield {"api": api, "tmp": tmp, "procs": procs, "s3": s3_endpoint, "store": store_url, "prefix": prefix,
               "mlflow": f"http://127.0.0.1:{mlflow_port}", "env": client_env, "deploy_out": deploy.stdout}
    finally:
        procs.stop_all()


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

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def parent_task_runs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _manifests(s3: str, prefix: str) -> dict[str, list[str]]:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3)
    fs.invalidate_cache()
    out: dict[str, list[str]] = {}
    for path in fs.glob(f"sgpo-test/{prefix}/store/*/*/manifest.json"):
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
    assert "work pool cpu: created" in cluster["deploy_out"] and "work pool cuda: created" in cluster["deploy_out"]
    with _client(cluster["api"]) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        assert pools["cpu"].type == pools["cuda"].type == "process"
        assert "TOKENIZERS_PARALLELISM" in json.dumps(pools["cuda"].base_job_template)
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        stage_deps = {s: deployments[f"{s}/sgpo-stage-{s}"] for s in GPU}
        assert all(d.work_pool_name == "cuda" for d in stage_deps.values())
        pipeline = deployments["sgpo/sgpo-pipeline"]
        assert pipeline.work_pool_name == "cpu"
        # the default config comes from `sgpo deploy` (a Prefect Variable over configs/tiny.yaml)
        assert pipeline.parameters["config"]["execution"]["mode"] == "distributed"
        assert pipeline.parameters["config"]["store"]["url"] == cluster["store"]
        nightly = deployments["sgpo/sgpo-nightly-step2"]
        assert nightly.parameters["config"]["rounds"] == 2 and nightly.schedules[0].schedule.cron == "0 2 * * *"
        client.pause_deployment(nightly.id)  # no surprise run if this test crosses 02:00 UTC

        # "Run" in the UI: a flow run of the deployment with its default parameters
        parent = client.create_flow_run_from_deployment(pipeline.id)

        # A GPU job dies during dpo (a preempted node): kill the child's process.
        def logs() -> str:
            return (f"cpu worker log tail:\n{procs.log('worker-cpu')[-6000:]}\n"
                    f"cuda worker log tail:\n{procs.log('worker-cuda')[-6000:]}")

        def dpo_running():
            state = client.read_flow_run(parent.id).state
            if state and state.is_final():
                raise AssertionError(f"the pipeline ended before dpo started: {state.type.value}: {state.message}\n{logs()}")
            runs = [r for r in _runs_of(client, stage_deps["dpo"].id) if r.state and r.state.type == StateType.RUNNING]
            return runs[0] if runs and runs[0].infrastructure_pid else None

        try:
            victim = wait_for(dpo_running, 900, "the dpo stage's flow run to start on the cuda worker", interval=0.5)
        except TimeoutError:
            raise AssertionError(f"pipeline state: {client.read_flow_run(parent.id).state}\n{logs()}") from None
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
            assert submitted in procs.log("worker-cuda") and submitted not in procs.log("worker-cpu")
            assert run.parent_task_run_id is not None  # a subflow of the pipeline run
            assert client.read_task_run(run.parent_task_run_id).flow_run_id == parent.id
            if stage != "dpo":
                assert run.state.type == StateType.COMPLETED, (stage, run.state)
        submitted = f"submitting flow run '{parent.id}'"
        assert submitted in procs.log("worker-cpu") and submitted not in procs.log("worker-cuda")
        for stage in ("base_model", "prepare", "annotate"):  # CPU stages: tasks of the pipeline run (cpu worker)
            assert any(r.name.split("[")[0] == stage for r in parent_task_runs(client, parent.id)), stage
        stored = _manifests(cluster["s3"], cluster["prefix"])
        assert set(stored) == {"base_model", "prepare", "sft", "sample", "annotate", "ppl_filter", "improver_sft", "pairs"}
        first_lines = len(procs.log("worker-cpu").splitlines())

        # -------- Retry (the UI's Retry button; here the CLI's `prefect flow-run retry`)
        retry = subprocess.run([venv_bin("prefect"), "flow-run", "retry", str(parent.id)], env=cluster["env"],
                               capture_output=True, text=True, timeout=120)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        wait_for(lambda: not client.read_flow_run(parent.id).state.is_final(), 60, "the retry to be scheduled")
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
        assert {s for s, v in status.items() if v == "ran"} == {"dpo", "prepare[eval]", "judge", "report"}, status
        assert all(status[s] == "cached" for s in ("base_model", "sft", "sample", "annotate", "ppl_filter",
                                                   "improver_sft", "pairs")), status

        assert any(r.name == "judge" for r in parent_task_runs(client, parent.id))
        assert not any(r.name in GPU for r in parent_task_runs(client, parent.id))  # GPU stages: never in-process

    stored = _manifests(cluster["s3"], cluster["prefix"])
    assert {"dpo", "judge"} <= set(stored) and all(len(v) == 1 for k, v in stored.items() if k != "prepare")

    # MLflow server: the pipeline's parent run with nested stage runs (logged from both workers)
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=cluster["mlflow"])
    exp = ml.get_experiment_by_name("sgpo")
    runs = ml.search_runs([exp.experiment_id], max_results=200)
    assert any(r.data.tags.get("prefect.flow_run_id") == str(parent.id) for r in runs)
    assert len(runs) > 5
