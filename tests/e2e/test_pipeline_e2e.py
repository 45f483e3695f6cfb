"""The tiny SGPO pipeline end to end, for real: Prefect (ephemeral API), the artifact store,
MLflow on SQLite and the embedded OpenAI-compatible server.

One module-scoped store: a run that fails at the judge (unreachable endpoint), the resumed run
that only judges, an all-cached run, a config change that re-runs only dpo and judge, and a
forced stage; each run is a module-scoped fixture chained to the one before it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sgpo.config import load_config
from tests.helpers.net import free_port

# in run order: each prepare step right before the first stage that reads it (flows.pipeline.plan)
ALL_STAGES = [
    "base_model",
    "prepare[sft]",
    "sft",
    "prepare[improver]",
    "sample",
    "annotate",
    "ppl_filter",
    "improver_sft",
    "prepare[po]",
    "pairs",
    "ref_logps",
    "dpo",
    "prepare[eval]",
    "judge",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def _cfg(workdir: Path, *overrides: str):
    return load_config(
        "tiny",
        [
            f"store.url={workdir}/store",
            f"tracking.mlflow_uri=sqlite:///{workdir}/mlflow.db",
            *overrides,
        ],
    )


def _status(report) -> dict[str, str]:
    return {s.stage: s.status for s in report.stages}


# One sequence of runs on the module's store, each a module-scoped fixture that requests the one
# before it: any single test (or any order) runs exactly the runs it needs, in the same order.
@pytest.fixture(scope="module")
def failed_run(workdir) -> SimpleNamespace:
    """A run whose judge endpoint is unreachable; the store as that run left it."""
    from flows.pipeline import StageFailed, sgpo_pipeline

    closed = free_port()  # nothing listens here: the judge endpoint is unreachable
    cfg = _cfg(
        workdir,
        f"judge.endpoint.base_url=http://127.0.0.1:{closed}/v1",
        "judge.endpoint.max_retries=1",
        "judge.endpoint.backoff_base_s=0.05",
    )
    with pytest.raises(StageFailed) as e:
        sgpo_pipeline(config=cfg)
    return SimpleNamespace(
        error=e.value,
        port=closed,
        judge_manifests=list((workdir / "store" / "judge").rglob("manifest.json")),
        dpo_manifests=list((workdir / "store" / "dpo").rglob("manifest.json")),
    )


@pytest.fixture(scope="module")
def resumed_run(failed_run, workdir):
    from flows.pipeline import sgpo_pipeline

    return sgpo_pipeline(config=_cfg(workdir))


@pytest.fixture(scope="module")
def cached_run(resumed_run, workdir):
    from flows.pipeline import sgpo_pipeline

    return sgpo_pipeline(config=_cfg(workdir))


@pytest.fixture(scope="module")
def changed_run(cached_run, workdir):
    from flows.pipeline import sgpo_pipeline

    return sgpo_pipeline(config=_cfg(workdir, "dpo.beta=0.2"))


@pytest.fixture(scope="module")
def forced_run(changed_run, workdir):
    from flows.pipeline import sgpo_pipeline

    return sgpo_pipeline(config=_cfg(workdir), force=["ppl_filter"])


def test_failed_run_names_the_stage_and_leaves_nothing_finished(failed_run):
    msg = str(failed_run.error)
    assert "stage 'judge' failed" in msg and f"127.0.0.1:{failed_run.port}" in msg
    assert not failed_run.judge_manifests  # no partial artifact looks finished
    assert len(failed_run.dpo_manifests) == 1


def test_rerun_resumes_at_the_failed_stage(resumed_run):
    status = _status(resumed_run)
    assert list(status) == ALL_STAGES
    assert status["judge"] == "ran"
    assert {k for k, v in status.items() if v == "ran"} == {"judge"}
    assert resumed_run.judge["n"] == 16


def test_second_run_is_fully_cached_and_traced(cached_run):
    report = cached_run
    assert set(_status(report).values()) == {"cached"}
    # lineage: the final policy's manifest names its parents and the library versions
    dpo_dir = Path(report.final_policy.removeprefix("file://"))
    manifest = json.loads((dpo_dir / "manifest.json").read_text())
    assert set(manifest["parents"]) == {"start", "pairs", "ref_logps"}
    assert manifest["config"]["beta"] == 0.1 and manifest["code_version"]
    assert {"torch", "transformers", "trl", "prefect"} <= set(manifest["library_versions"])
    assert sorted(
        p.name for p in (dpo_dir / "model").iterdir() if p.suffix in (".safetensors", ".bin")
    ) == ["model.safetensors"]


def test_changing_one_stage_reruns_it_and_downstream_only(changed_run):
    ran = {k for k, v in _status(changed_run).items() if v == "ran"}
    assert ran == {"dpo", "judge"}


def test_force_recomputes_one_stage(forced_run):
    status = _status(forced_run)
    assert status["ppl_filter"] == "ran"
    # deterministic stage: same content hash, so everything downstream is still cached
    assert {k for k, v in status.items() if v == "ran"} == {"ppl_filter"}


def test_mlflow_has_a_parent_run_with_nested_stage_runs(forced_run, workdir):
    """After the five runs above (one failed): one parent run each, nested runs for the stages."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("sgpo")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 5 and all(r.data.tags.get("prefect.flow_run_id") for r in parents)
    assert {r.info.status for r in parents} == {"FINISHED", "FAILED"}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    sft = [
        r
        for r in children
        if r.data.tags.get("sgpo.core.stage") == "sft" and r.data.tags.get("sgpo.cached") == "false"
    ]
    assert len(sft) == 1
    assert sft[0].data.params["learning_rate"] == "0.001" and "train_loss" in sft[0].data.metrics
    annotate = [
        r
        for r in children
        if r.data.tags.get("sgpo.core.stage") == "annotate"
        and r.data.tags.get("sgpo.cached") == "false"
    ][0]
    assert annotate.data.metrics["ok"] > 0 and "endpoint.api_key_env" not in annotate.data.params


@pytest.mark.slow  # a second full run; S3 by the store, journal, checkpoint tests
def test_pipeline_on_s3_through_moto(s3_endpoint, tmp_path, monkeypatch):
    """Same pipeline with the store (artifacts + Prefect cache records) on a real S3 endpoint."""
    import s3fs

    from flows.pipeline import sgpo_pipeline

    monkeypatch.setenv("SGPO_CACHE_DIR", str(tmp_path / "cache"))
    opts = json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}})
    cfg = load_config(
        "tiny",
        [
            "store.url=s3://sgpo-test/e2e",
            f"store.storage_options={opts}",
            f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlflow.db",
            "data.po.max_rows=8",
        ],
    )
    first = sgpo_pipeline(config=cfg)
    assert set(_status(first).values()) == {"ran"}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    assert fs.exists(
        f"sgpo-test/e2e/dpo/{first.final_policy.rsplit('/', 1)[1]}/model/model.safetensors"
    )
    assert not fs.exists("sgpo-test/e2e/_prefect")  # the store is the only cache
    second = sgpo_pipeline(config=cfg)
    assert set(_status(second).values()) == {"cached"}
