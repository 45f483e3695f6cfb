"""The team setup, checked without a server: prefect.yaml, work-pool templates, the compose stack
and Dockerfiles, the pipeline's parameter schema (the UI form), GPU-stage dispatch and `sgpo deploy`.
The same things running for real: tests/e2e/test_cluster.py (slow); what takes a process or a
Prefect run: tests/integration/deployments/."""

from __future__ import annotations

import argparse
import inspect
import json
import re
from types import SimpleNamespace

import pytest

import tests.helpers.cluster as cluster_helpers
import tests.helpers.deployments as deployment_helpers
from tests.helpers.cluster import (
    ANY,
    DEPLOY,
    MLFLOW,
    REPO,
    SERVER,
    TEMPLATES,
    WORKER_CPU,
    WORKER_CUDA,
    fill,
    matches,
)
from tests.helpers.deployments import (
    DEPLOYMENTS,
    POOLS,
    Image,
    distributed,
    read_compose,
    read_images,
    read_prefect_yaml,
    variable_defaults,
)

GPU = (
    "sft",
    "sample",
    "ppl_filter",
    "improver_sft",
    "pairs",
    "ref_logps",
    "dpo",
    "sapo",
    "orpo",
    "refine",
    "judge",
    "alpaca_eval_generate",
    "arena_hard_generate",
    "mt_bench_generate",
    "lm_eval",
)


# --------------------------------------------------------------------------- prefect.yaml


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return read_prefect_yaml()


def test_prefect_yaml_validates_with_prefects_own_model(prefect_yaml):
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig

    model = PrefectYamlModel.model_validate(prefect_yaml)
    names = [d.name for d in model.deployments]
    assert len(names) == len(set(names))
    scheduled = [d for d in model.deployments if d.schedules]
    assert scheduled, "a schedule is defined in prefect.yaml"
    for d in scheduled:
        for s in d.schedules:
            RawScheduleConfig.model_validate(s if isinstance(s, dict) else s.model_dump())


def test_every_gpu_stage_has_a_deployment_on_the_cuda_pool(prefect_yaml):
    from flows.stages import GPU_STAGES, STAGE_FLOWS, deployment_name, entrypoint
    from sgpo.config import ExecutionConfig

    assert set(GPU_STAGES) == set(GPU)
    by_entry = {d["entrypoint"]: d for d in prefect_yaml["deployments"]}
    prefix = ExecutionConfig().deployment_prefix
    for stage in GPU:
        d = by_entry[entrypoint(stage)]
        assert d["work_pool"]["name"] == ExecutionConfig().cuda_work_pool == "cuda"
        # run_deployment's "<flow>/<deployment>" must name exactly this deployment
        assert deployment_name(stage, prefix) == f"{STAGE_FLOWS[stage].name}/{d['name']}"
        assert "gpu" in d["tags"]


def test_pipeline_deployments_are_on_the_cpu_pool_with_the_config_variable(prefect_yaml):
    pipe = [
        d for d in prefect_yaml["deployments"] if d["entrypoint"] == "flows.pipeline:sgpo_pipeline"
    ]
    assert {d["name"] for d in pipe} >= {"sgpo-pipeline", "sgpo-nightly-step2"}
    for d in pipe:
        assert d["work_pool"]["name"] == "cpu"
        assert re.fullmatch(
            r"\{\{ prefect\.variables\.sgpo_\w+_config \}\}", d["parameters"]["config"]
        )
    nightly = next(d for d in pipe if d["name"] == "sgpo-nightly-step2")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"


def test_evaluation_flow_has_a_deployment(prefect_yaml):
    (ev,) = [d for d in prefect_yaml["deployments"] if d["entrypoint"] == "flows.evaluate:evaluate"]
    assert ev["work_pool"]["name"] == "cuda"  # it generates the evaluated model's answers itself
    assert ev["parameters"]["config"] == "{{ prefect.variables.sgpo_evaluate_config }}"


def test_entrypoints_are_importable_module_paths(prefect_yaml):
    """Module form: a file path (flows/pipeline.py:...) makes Prefect put flows/ first on sys.path, so the
    worker would import a script folder instead of the installed packages (sgpo, tasks, flows)."""
    from prefect.flows import Flow
    from prefect.utilities.importtools import import_object

    for d in prefect_yaml["deployments"]:
        assert ".py:" not in d["entrypoint"], d["entrypoint"]
        assert isinstance(import_object(d["entrypoint"]), Flow)


def test_workers_resolve_the_checkout_at_run_time(prefect_yaml):
    (step,) = prefect_yaml["pull"]
    assert (
        step["prefect.deployments.steps.set_working_directory"]["directory"]
        == "{{ $SGPO_REPO_DIR }}"
    )


# --------------------------------------------------------------------------- work pools


def _placeholders(obj) -> set[str]:
    text = json.dumps(obj)
    return set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", text))


@pytest.mark.parametrize("name", ["cpu-process.json", "cuda-process.json", "cuda-kubernetes.json"])
def test_pool_templates_are_valid_and_closed(name):
    t = json.loads((POOLS / name).read_text())
    assert set(t) == {"job_configuration", "variables"}
    props = t["variables"]["properties"]
    # every placeholder of the job configuration is a declared variable
    assert _placeholders(t["job_configuration"]) <= set(props), _placeholders(
        t["job_configuration"]
    ) - set(props)


@pytest.mark.parametrize("name", ["cpu-process.json", "cuda-process.json"])
def test_process_templates_render_to_a_process_job(name):
    from prefect.utilities.templating import apply_values
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

    t = json.loads((POOLS / name).read_text())
    default = ProcessWorker.get_default_base_job_template()
    assert set(t["variables"]["properties"]) >= set(default["variables"]["properties"])
    values = variable_defaults(t)
    job = ProcessJobConfiguration.model_validate(apply_values(t["job_configuration"], values))
    assert job.env.get("TOKENIZERS_PARALLELISM") == "false"


def test_kubernetes_cuda_template_requests_gpu_count_gpus():
    from prefect.utilities.templating import apply_values

    t = json.loads((POOLS / "cuda-kubernetes.json").read_text())
    gpu = t["variables"]["properties"]["gpu_count"]
    assert gpu["type"] == "integer" and gpu["default"] == 1
    values = {**variable_defaults(t), "gpu_count": 8}
    manifest = apply_values(t["job_configuration"], values)["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 8 and res["requests"]["nvidia.com/gpu"] == 8
    assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"  # /dev/shm for NCCL / vLLM
    assert pod["containers"][0]["image"] == "sgpo-cuda:latest"
    assert any(tol["key"] == "nvidia.com/gpu" for tol in pod["tolerations"])


# --------------------------------------------------------------------------- images and compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return read_compose()


def test_compose_runs_only_commands_the_test_suite_runs(compose):
    """Every service built from our images runs one of the commands tests/e2e/test_cluster.py runs."""
    services = compose["services"]
    ours = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("sgpo-")}
    assert set(ours) >= {"prefect-server", "mlflow", "deploy", "worker-cpu", "worker-cuda"}
    for name, svc in ours.items():
        cmd = [str(c) for c in svc["command"]]
        assert any(matches(cmd, t) for t in TEMPLATES), (
            f"{name}: {cmd} is not a command tests/e2e/test_cluster.py runs"
        )
    assert matches(ours["worker-cuda"]["command"], WORKER_CUDA)
    assert matches(ours["worker-cpu"]["command"], WORKER_CPU)
    assert ours["worker-cuda"]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    gpus = ours["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    # MinIO + MLflow + Prefect wired together
    assert {"minio", "postgres"} <= set(services)
    env = ours["worker-cpu"]["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["SGPO_STORE_URL"].startswith(
        "s3://"
    )
    assert "--artifacts-destination" in ours["mlflow"]["command"]


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return read_images()


def test_dockerfiles_default_to_the_workers(images):
    """Each image's default command is the worker command tests/e2e/test_cluster.py runs, under tini (a
    process worker runs each flow run as a subprocess; tini reaps them)."""
    assert images["cpu"].entrypoint == ["tini", "--"] and matches(images["cpu"].cmd, WORKER_CPU)
    assert images["cuda"].entrypoint == ["tini", "--"] and matches(images["cuda"].cmd, WORKER_CUDA)


def test_command_templates():
    assert fill(SERVER, "127.0.0.1", "4200") == [
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        "4200",
    ]
    assert matches(["sgpo", "deploy", "--store-url", "s3://b/p"], DEPLOY)
    assert not matches(["prefect", "worker", "start", "--pool", "cuda"], WORKER_CUDA)
    assert matches(
        fill(MLFLOW, "h", "1", "sqlite:///x", "s3://b/m", extra=("--workers", "1")), MLFLOW
    )
    assert ANY not in fill(MLFLOW, "h", "1", "u", "d")


def test_cluster_doc_walk_has_a_plan_for_every_line():
    """Every command line of docs/cluster.md sections 1-6 is run by tests/e2e/test_cluster.py's walk or
    skipped with a reason; the fast half of that slow test (no servers)."""
    values = {
        "api_port": "1",
        "mlflow_port": "2",
        "pg_port": "4",
        "s3": "http://127.0.0.1:3",
        "repo": str(REPO),
        "mlflow_dir": "/tmp/m",
        "bucket": "sgpo-walk-x",
    }
    steps, _ = cluster_helpers.plan_walk(values)
    started = {s.name: s.machine for s in steps if s.kind == "background"}
    assert started == {
        "server": "prefect-host",
        "mlflow": "operator",
        "worker-cpu": "cpu-machine",
        "worker-cuda": "gpu-machine",
    }
    ran = [s.name for s in steps if s.kind == "run"]
    assert ran == ["database", "bucket", "deploy", "deployment-run"]
    assert all(s.reason for s in steps if s.kind == "skip")
    # each worker's block gives it the store, the repo and (its own or section 1's) API URL
    exported: dict[str, set[str]] = {}
    for s in steps:
        if s.kind == "export":
            exported.setdefault(s.machine, set()).update(s.exports)
    for machine in ("cpu-machine", "gpu-machine"):
        assert {
            "SGPO_REPO_DIR",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
        } <= exported[machine]


def test_cluster_doc_walk_fails_on_an_unknown_line():
    text = cluster_helpers.DOC.read_text()
    values = {
        "api_port": "1",
        "mlflow_port": "2",
        "pg_port": "4",
        "s3": "s",
        "repo": "r",
        "mlflow_dir": "m",
        "bucket": "b",
    }
    new = text.replace(
        "prefect worker start --pool cpu --type process\n",
        "prefect worker start --pool cpu --type process\nsudo systemctl start sgpo\n",
        1,
    )
    assert new != text
    with pytest.raises(cluster_helpers.DocDrift, match="does not know 'sudo systemctl start sgpo'"):
        cluster_helpers.plan_walk(values, new)
    with pytest.raises(cluster_helpers.DocDrift, match="left in"):
        cluster_helpers.plan_walk(
            values, text.replace("http://minio:9000      #", "http://minio:9001      #", 1)
        )
    with pytest.raises(cluster_helpers.DocDrift, match="skipped lines"):
        cluster_helpers.plan_walk(values, text.replace("mc mb local/sgpo", "# (removed)", 1))


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    z = load_config_from_file(str(REPO / "configs/accelerate/zero3.yaml"))
    assert z.distributed_type == "DEEPSPEED" and z.deepspeed_config["zero_stage"] == 3
    f = load_config_from_file(str(REPO / "configs/accelerate/fsdp.yaml"))
    assert f.distributed_type == "FSDP" and f.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"


# --------------------------------------------------------------------------- parameter schemas (UI forms)


def test_pipeline_parameter_schema_has_every_config_section():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import sgpo_pipeline

    schema = parameter_schema(sgpo_pipeline).model_dump_for_openapi()
    defs = schema["definitions"]
    props = defs["PipelineConfig"]["properties"]
    for section in (
        "sft",
        "sample",
        "annotate",
        "ppl_filter",
        "improver_sft",
        "pairs",
        "dpo",
        "judge",
        "store",
        "tracking",
        "execution",
        "data",
        "rounds",
        "shared_improver",
    ):
        assert section in props, section
    assert "beta" in defs["DPOStageConfig"]["properties"]
    assert defs["ExecutionConfig"]["properties"]["mode"]["enum"] == ["local", "distributed"]
    assert {"config", "force"} <= set(schema["properties"])


@pytest.mark.parametrize("stage", GPU)
def test_stage_flow_parameters_match_the_stage_task(stage):
    """dispatch sends the task's parameters to the flow, and the flow's task computes the stage's cache key from them."""
    from prefect.utilities.callables import parameter_schema

    from artifacts.refs import ArtifactRef
    from flows.stages import STAGE_FLOWS
    from sgpo.core.prefect_tasks import prefect_task
    from tasks import get_stage

    st = get_stage(stage)
    task = prefect_task(st)
    flow_params = list(inspect.signature(STAGE_FLOWS[stage].fn).parameters)
    assert (
        flow_params
        == list(inspect.signature(task.fn).parameters)
        == ["inputs", "cfg", "ctx", "params"]
    )
    schema = parameter_schema(STAGE_FLOWS[stage]).model_dump_for_openapi()
    assert set(schema["required"]) == {
        "inputs",
        "cfg",
        "ctx",
    }  # params: optional (most GPU stages take none)
    assert {"ArtifactRef", "StageContext", st.config.__name__} <= set(schema["definitions"])
    assert STAGE_FLOWS[stage].result_serializer == "json" and STAGE_FLOWS[stage].persist_result
    # no Prefect cache record decides "done" (the store does); the stage's key is the same for a cfg
    # that arrives as JSON (a deployment's parameters)
    inputs = {
        n: ArtifactRef(
            uri=f"file:///x/{n}", kind="model", stage="s", cache_key="c", content_hash=f"h-{n}"
        )
        for n in st.inputs
    }
    cfg = st.config()
    values = {n: f"value-of-{n}" for n in st.params} or None  # e.g. the evaluated model's name
    params = {"inputs": inputs, "cfg": cfg.model_dump(mode="json"), "ctx": None, "params": values}
    assert task.cache_key_fn is None and type(task.cache_policy).__name__ == "_None"
    assert st.cache_key(st.coerce(params["cfg"]), inputs, values) == st.cache_key(
        cfg, inputs, values
    )
    if values:  # the parameters reach the key: another value, another key
        assert st.cache_key(cfg, inputs, values) != st.cache_key(
            cfg, inputs, {n: "other" for n in st.params}
        )


# --------------------------------------------------------------------------- dispatch (no server)


@pytest.fixture
def sft_inputs(tmp_path):
    return deployment_helpers.sft_inputs(tmp_path)


class _FakeFlowRun(SimpleNamespace):
    pass


def test_dispatch_of_a_cached_gpu_stage_dispatches_nothing(sft_inputs, monkeypatch):
    import pyarrow as pa

    import flows.dispatch as d

    s = sft_inputs
    done = s.store.publish_table(
        "sft", s.key, pa.table({"x": [3]}), manifest={}, produced_by="earlier-run"
    )
    monkeypatch.setattr(
        "flows.dispatch.run_child", lambda **k: pytest.fail("dispatched a cached stage")
    )
    monkeypatch.setattr(d, "_check_deployment", lambda *a: pytest.fail("no server needed"))
    assert d.dispatch_stage("sft", s.st, s.cfg, s.inputs, None, s.ctx, distributed()) == (
        done,
        True,
        "",
    )
    # force: the store is bypassed and the stage is dispatched
    forced = s.ctx.model_copy(update={"refresh": True})
    monkeypatch.setattr(d, "_check_deployment", lambda *a: SimpleNamespace(work_pool_name="cuda"))
    sent = {}

    def fake_run_deployment(**kw):
        sent.update(kw)
        return _FakeFlowRun(name="sft-x", id="1", state=SimpleNamespace(is_completed=lambda: True))

    monkeypatch.setattr("flows.dispatch.run_child", fake_run_deployment)
    ref, cached, _ = d.dispatch_stage("sft", s.st, s.cfg, s.inputs, None, forced, distributed())
    assert ref == done and sent["parameters"]["ctx"]["refresh"] is True


def test_dispatch_runs_the_deployment_and_reads_the_artifact_back(sft_inputs, monkeypatch):
    import pyarrow as pa

    import flows.dispatch as d
    from artifacts.refs import ArtifactRef
    from sgpo.core import StageContext

    s = sft_inputs
    monkeypatch.setattr(
        d, "_check_deployment", lambda name, ex: SimpleNamespace(work_pool_name=ex.cuda_work_pool)
    )
    sent = {}

    def fake_run_deployment(**kw):  # the child flow run on the cuda pool publishes the artifact
        sent.update(kw)
        s.store.publish_table(
            "sft", s.key, pa.table({"x": [4]}), manifest={}, produced_by="parent-run"
        )
        return _FakeFlowRun(
            name="sft-abc", id="42", state=SimpleNamespace(is_completed=lambda: True)
        )

    monkeypatch.setattr("flows.dispatch.run_child", fake_run_deployment)
    ref, cached, _ = d.dispatch_stage("sft", s.st, s.cfg, s.inputs, None, s.ctx, distributed())
    assert sent["name"] == "sft/sgpo-stage-sft"
    params = json.loads(json.dumps(sent["parameters"]))  # crosses the API as JSON
    assert set(params) == {"inputs", "cfg", "ctx", "params"} and set(params["inputs"]) == {
        "base",
        "data",
    }
    # what the child flow receives gives the same key: it publishes where the parent looks
    inputs = {k: ArtifactRef.model_validate(v) for k, v in params["inputs"].items()}
    assert s.st.cache_key(s.st.coerce(params["cfg"]), inputs, params["params"]) == s.key
    assert StageContext.model_validate(params["ctx"]) == s.ctx
    assert ref.stage == "sft" and ref.cache_key == s.key and cached is False


def test_dispatch_failure_names_the_stage_and_the_child_run(sft_inputs, monkeypatch):
    from prefect.states import Crashed

    import flows.dispatch as d

    s = sft_inputs
    monkeypatch.setattr(
        d, "_check_deployment", lambda name, ex: SimpleNamespace(work_pool_name="cuda")
    )
    monkeypatch.setattr(
        "flows.dispatch.run_child",
        lambda **kw: _FakeFlowRun(
            name="dpo-1234", id="abcd", state=Crashed(message="Process exited with status code: -9")
        ),
    )
    with pytest.raises(d.StageDispatchError) as e:
        d.dispatch_stage("sft", s.st, s.cfg, s.inputs, None, s.ctx, distributed())
    msg = str(e.value)
    assert (
        "'sft'" in msg and "dpo-1234" in msg and "abcd" in msg and "CRASHED" in msg and "-9" in msg
    )


def test_dispatch_of_a_completed_child_without_artifact_is_an_error(sft_inputs, monkeypatch):
    import flows.dispatch as d

    s = sft_inputs
    monkeypatch.setattr(
        d, "_check_deployment", lambda name, ex: SimpleNamespace(work_pool_name="cuda")
    )
    monkeypatch.setattr(
        "flows.dispatch.run_child",
        lambda **kw: _FakeFlowRun(
            name="sft-1", id="9", state=SimpleNamespace(is_completed=lambda: True)
        ),
    )
    with pytest.raises(d.StageDispatchError, match="same store"):
        d.dispatch_stage("sft", s.st, s.cfg, s.inputs, None, s.ctx, distributed())


def _fake_cuda_pool(monkeypatch, store, sent: list):
    """run_deployment as the cuda pool answers it: the child runs nothing but publishes under the key it computes
    from the parameters it received (as flows.stages does)."""
    import pyarrow as pa

    import flows.dispatch as d
    from artifacts.refs import ArtifactRef
    from tasks import get_stage

    monkeypatch.setattr(
        d, "_check_deployment", lambda name, ex: SimpleNamespace(work_pool_name=ex.cuda_work_pool)
    )

    def fake_run_deployment(**kw):
        params = json.loads(json.dumps(kw["parameters"]))  # crosses the API as JSON
        sent.append((kw["name"], params))
        st = get_stage(kw["name"].split("/")[0])
        inputs = {k: ArtifactRef.model_validate(v) for k, v in params["inputs"].items()}
        key = st.cache_key(st.coerce(params["cfg"]), inputs, params["params"])
        store.publish_table(
            st.name, key, pa.table({"x": [1]}), manifest={}, produced_by="parent-run"
        )
        return _FakeFlowRun(
            name=kw["flow_run_name"], id="7", state=SimpleNamespace(is_completed=lambda: True)
        )

    monkeypatch.setattr("flows.dispatch.run_child", fake_run_deployment)


def test_evaluation_flow_in_distributed_mode_dispatches_its_gpu_stages(tmp_path, monkeypatch):
    """execution.mode=distributed in the evaluation config: the generate stages and lm_eval go to their
    deployments on the cuda pool (with the model name parameter), the judges run in this process."""
    import flows.dispatch as d
    import flows.evaluate as ev
    from artifacts.refs import ArtifactRef
    from artifacts.store import ArtifactStore
    from sgpo.config import EvaluationConfig
    from sgpo.core import StageContext

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    judge = {"endpoint": {"base_url": "http://judge.example/v1", "model": "j"}}
    cfg = EvaluationConfig.model_validate(
        {
            "model": {"path": str(model), "name": "m"},
            "store": {"url": str(tmp_path / "store")},
            "execution": {"mode": "distributed"},
            "alpaca_eval": judge,
            "arena_hard": judge,
            "mt_bench": {"enabled": True, **judge},
            "lm_eval": {"enabled": True},
        }
    )
    store = ArtifactStore(cfg.store.url)
    sent: list = []
    _fake_cuda_pool(monkeypatch, store, sent)
    here = []

    def in_process(st, cfg_, ctx, inputs, params=None, *, label=None):
        here.append(label)
        return (
            ArtifactRef(
                uri=f"file:///x/{label}",
                kind="table",
                stage=st.name,
                cache_key="k" * 64,
                content_hash="h",
                produced_by=ctx.run_id,
                summary={},
            ),
            False,
            "",
        )

    monkeypatch.setattr(d, "run_task", in_process)
    monkeypatch.setattr(ev, "_publish_ui_artifacts", lambda report: None)
    ctx = StageContext(store=cfg.store, run_id="parent-run")
    ev._evaluate(cfg, ctx, [])
    assert [name for name, _ in sent] == [
        f"{s}/sgpo-stage-{s}"
        for s in ("alpaca_eval_generate", "arena_hard_generate", "mt_bench_generate", "lm_eval")
    ]
    assert all(params["params"] == {"model_name": "m"} for _, params in sent)
    assert here == ["alpaca_eval_judge", "arena_hard_judge", "mt_bench_judge"]
    # local mode (the default): nothing is dispatched
    sent.clear(), here.clear()
    ev._evaluate(
        cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"mode": "local"})}),
        ctx,
        [],
    )
    assert sent == [] and len(here) == 7


def test_dispatched_judge_carries_the_resolved_endpoint_and_a_loopback_one_runs_here(
    tmp_path, monkeypatch, caplog
):
    """The pipeline's judge is a GPU stage that calls an LLM: the endpoint the orchestrator resolved travels
    in the cfg the GPU worker receives; an endpoint on this machine's loopback (the embedded stand-in, which
    a GPU worker on another host cannot reach) keeps the stage in this process, with a line saying why."""
    import logging

    import pyarrow as pa

    import flows.dispatch as d
    from artifacts.store import ArtifactStore
    from sgpo.config import JudgeStageConfig, StoreConfig
    from sgpo.core import StageContext
    from tasks import get_stage

    store = ArtifactStore(str(tmp_path / "store"))
    inputs = {
        "policy": store.publish_table("dpo", "p" * 64, pa.table({"x": [1]}), manifest={}),
        "data": store.publish_table("prepare", "d" * 64, pa.table({"x": [2]}), manifest={}),
    }
    # refresh: the URL is no part of the key, so the second judge would otherwise be the first one's artifact
    ctx = StageContext(
        store=StoreConfig(url=str(tmp_path / "store")), run_id="parent-run", refresh=True
    )
    sent: list = []
    _fake_cuda_pool(monkeypatch, store, sent)
    here: list = []
    monkeypatch.setattr(
        d,
        "run_task",
        lambda st, cfg, *a, **k: (here.append(cfg.endpoint.base_url), (inputs["data"], False, ""))[
            1
        ],
    )
    st = get_stage("judge")
    for url, local in (
        ("http://127.0.0.1:8123/v1", True),
        ("http://judge.internal:8000/v1", False),
    ):
        cfg = JudgeStageConfig.model_validate({"endpoint": {"base_url": url, "model": "stand-in"}})
        caplog.clear(), sent.clear(), here.clear()
        with caplog.at_level(logging.INFO):
            ref, cached, _ = d.dispatch_stage("judge", st, cfg, inputs, None, ctx, distributed())
        assert cached is False
        if local:
            assert sent == [] and here == [url]
            assert "loopback" in caplog.text and "judge.endpoint.base_url" in caplog.text, (
                caplog.text
            )
            continue
        ((name, params),) = sent
        assert here == [] and name == "judge/sgpo-stage-judge" and ref.stage == "judge"
        assert (
            params["cfg"]["endpoint"]["base_url"] == url
            and params["cfg"]["endpoint"]["model"] == "stand-in"
        )
        assert "loopback" not in caplog.text, caplog.text


def test_loopback_urls():
    from flows.dispatch import is_loopback

    assert (
        is_loopback("http://127.0.0.1:8000/v1")
        and is_loopback("http://localhost/v1")
        and is_loopback("http://[::1]:1/v1")
    )
    assert not is_loopback("http://10.0.0.5:8000/v1") and not is_loopback(
        "https://api.openai.com/v1"
    )
    assert not is_loopback(None) and not is_loopback("")


# --------------------------------------------------------------------------- sgpo deploy


def test_deploy_parser_and_default_configs(monkeypatch):
    from sgpo.cli import deploy
    from sgpo.config import PipelineConfig

    parser = argparse.ArgumentParser(prog="sgpo")
    deploy.add_deploy_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "deploy",
            "--config",
            "tiny",
            "--set",
            "rounds=3",
            "--store-url",
            "s3://b/p",
            "--cuda-pool-type",
            "kubernetes",
        ]
    )
    assert (
        args.func is deploy.cmd_deploy
        and args.set == ["rounds=3"]
        and args.cuda_pool_type == "kubernetes"
    )

    configs = deploy.default_configs(
        "tiny", ["dpo.beta=0.2"], "s3://bucket/store", "http://mlflow:5000"
    )
    pipe = PipelineConfig.model_validate(configs[deploy.PIPELINE_CONFIG_VARIABLE])
    nightly = PipelineConfig.model_validate(configs[deploy.NIGHTLY_CONFIG_VARIABLE])
    assert pipe.execution.mode == "distributed" and pipe.store.url == "s3://bucket/store"
    assert (
        pipe.tracking.mlflow_uri == "http://mlflow:5000"
        and pipe.dpo.beta == 0.2
        and pipe.rounds == 1
    )
    assert nightly.rounds == 2 and nightly.dpo.beta == 0.2
    from sgpo.config import EvaluationConfig

    ev = EvaluationConfig.model_validate(configs[deploy.EVALUATE_CONFIG_VARIABLE])
    assert ev.store.url == "s3://bucket/store" and ev.tracking.experiment == "sgpo-eval"
    for value in configs.values():
        assert len(json.dumps(value)) <= deploy.MAX_VARIABLE_CHARS
    for preset in ("qwen2.5-7b", "llama3-8b", "qwen2-1.5b"):
        deploy.default_configs(
            preset, eval_preset="eval-alpaca-arena"
        )  # every paper preset fits a Variable
    with pytest.raises(deploy.DeployError, match="dpo.bta"):
        deploy.default_configs("tiny", ["dpo.bta=0.2"])


def test_deploy_needs_a_server_and_keeps_the_repo_template(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sgpo.cli import deploy

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(deploy.DeployError, match="PREFECT_API_URL"):
            deploy.deploy()
    monkeypatch.setenv("SGPO_REPO_DIR", str(REPO))
    assert "SGPO_REPO_DIR" not in deploy.deploy_env()  # resolved by each worker, not at deploy time
    cmd = deploy.prefect_deploy_command(DEPLOYMENTS / "prefect.yaml")
    assert cmd[1:5] == ["-m", "prefect", "--no-prompt", "deploy"] and cmd[-1] == "--all"
    specs = {s["name"]: s for s in deploy.pool_specs("kubernetes")}
    assert specs["cuda"]["type"] == "kubernetes" and "gpu_count" in json.dumps(
        specs["cuda"]["base_job_template"]
    )
    assert specs["cpu"]["type"] == "process"


def test_distributed_mode_without_a_server_says_so(sft_inputs):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.dispatch as d

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(d.StageDispatchError, match="PREFECT_API_URL is not set"):
            d.dispatch_stage(
                "sft",
                sft_inputs.st,
                sft_inputs.cfg,
                sft_inputs.inputs,
                None,
                sft_inputs.ctx,
                distributed(),
            )


def test_distributed_mode_from_a_flow_run_on_the_cuda_pool_is_refused_before_any_work(monkeypatch):
    """The evaluation deployment runs on the cuda pool: with execution.mode=distributed its GPU stages would
    wait for a slot of the pool its own run holds. Refused with a way out; local mode there is fine."""
    from types import SimpleNamespace

    import prefect.context

    from flows.dispatch import StageDispatchError, check_not_on_the_cuda_pool
    from sgpo.config import ExecutionConfig

    def on(pool):
        monkeypatch.setattr(
            prefect.context.FlowRunContext,
            "get",
            classmethod(lambda cls: SimpleNamespace(flow_run=SimpleNamespace(work_pool_name=pool))),
        )

    on("cuda")
    with pytest.raises(
        StageDispatchError, match="runs on the GPU stages' work pool 'cuda'.*execution.mode=local"
    ):
        check_not_on_the_cuda_pool(ExecutionConfig(mode="distributed"))
    check_not_on_the_cuda_pool(ExecutionConfig(mode="local"))
    on("cpu")
    check_not_on_the_cuda_pool(ExecutionConfig(mode="distributed"))
    on(None)  # a flow run started without a deployment (sgpo run ... execution.mode=distributed)
    check_not_on_the_cuda_pool(ExecutionConfig(mode="distributed"))
