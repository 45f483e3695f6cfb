"""MLflow tracking with explicit run ids (MLflow's active run is thread-local, Prefect tasks
may run in other threads or processes): one parent run per pipeline run, a nested run per stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)


class TrackingHandle(BaseModel):
    """What a stage needs to log into the pipeline's MLflow run (crosses process boundaries)."""

    uri: str
    experiment_id: str
    parent_run_id: str


def _normalize_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextmanager
def _setup_lock(uri: str) -> Iterator[None]:
    """One process at a time sets up a SQLite tracking database: MLflow creates a new database's
    tables and runs its migrations on first use with no lock of its own, so two first runs started
    at once in one folder failed with SQLAlchemy errors ("duplicate column name", "table ...
    already exists"). A lock file beside the database; other tracking servers need none."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def start_pipeline_run(
    uri: str, experiment: str, run_name: str, *, artifact_root: str | None, tags: dict[str, str]
) -> TrackingHandle:
    uri = _normalize_uri(uri)
    # the client opens (and on first use creates) the database; the experiment is created once
    with _setup_lock(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            # Keep MLflow's own artifacts beside the database, not in ./mlruns of whatever cwd.
            exp_id = client.create_experiment(experiment, artifact_location=artifact_root)
        else:
            exp_id = exp.experiment_id
    flow_run_id = tags.get("prefect.flow_run_id")
    tags = {**tags, **_prefect_url_tag(flow_run_id)}
    run = _existing_parent(client, exp_id, flow_run_id)
    if run is not None:  # a retry of the same Prefect flow run: the same MLflow parent run
        client.update_run(run.info.run_id, status="RUNNING")
        end_stale_stage_runs(client, exp_id, run.info.run_id)
        for k, v in tags.items():
            client.set_tag(run.info.run_id, k, v)
        return TrackingHandle(uri=uri, experiment_id=exp_id, parent_run_id=run.info.run_id)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    return TrackingHandle(uri=uri, experiment_id=exp_id, parent_run_id=run.info.run_id)


def _existing_parent(client: Any, exp_id: str, flow_run_id: str | None) -> Any:
    """The parent run an earlier attempt of this Prefect flow run made (looked up by its tag)."""
    if not flow_run_id or flow_run_id == "None":
        return None
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
        max_results=10,
        order_by=["attributes.start_time ASC"],
    )
    found = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    return found[0] if found else None


def end_stale_stage_runs(client: Any, exp_id: str, parent_run_id: str) -> list[str]:
    """Nested runs an earlier attempt left RUNNING (its process was killed, or it failed before
    MLflow heard): KILLED now, since no stage of this flow run is running while a new attempt starts."""
    stale = client.search_runs(
        [exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
        "and attributes.status = 'RUNNING'",
        max_results=500,
    )
    for r in stale:
        client.set_tag(
            r.info.run_id,
            "sgpo.ended_by",
            "the next attempt of the flow run (the stage was killed)",
        )
        client.set_terminated(r.info.run_id, status="KILLED")
    return [r.info.run_id for r in stale]


def _prefect_url_tag(flow_run_id: str | None) -> dict[str, str]:
    if not flow_run_id or flow_run_id == "None":
        return {}
    try:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
    except Exception:  # noqa: BLE001
        ui = None
    return {"prefect.flow_run_url": f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"} if ui else {}


def end_pipeline_run(handle: TrackingHandle, status: str = "FINISHED") -> None:
    _client(handle.uri).set_terminated(handle.parent_run_id, status=status)


@contextmanager
def pipeline_run(
    cfg: Any, run_name: str, *, tags: dict[str, str]
) -> Iterator[TrackingHandle | None]:
    """The parent MLflow run of one flow run (None when `cfg.enabled` is off): FINISHED when the
    block ends, FAILED when it raises, KILLED when the flow run was cancelled. `cfg` is a
    TrackingConfig."""
    if not cfg.enabled:
        yield None
        return
    uri = cfg.mlflow_uri
    # MLflow's own artifacts live beside a SQLite database, not in ./mlruns of whatever cwd.
    root = (
        str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlruns")
        if uri.startswith("sqlite:///")
        else None
    )
    handle = start_pipeline_run(uri, cfg.experiment, run_name, artifact_root=root, tags=tags)
    try:
        yield handle
    except BaseException:
        end_pipeline_run(handle, _ended_by_error(_client(handle.uri), handle.parent_run_id))
        raise
    end_pipeline_run(handle, "FINISHED")


def _ended_by_error(client: Any, run_id: str) -> str:
    """FAILED, or KILLED (tagged `sgpo.ended_by`) when the flow run was cancelled."""
    from sgpo.core.cancel import CANCELLED_MESSAGE, run_cancelled

    if not run_cancelled():
        return "FAILED"
    client.set_tag(run_id, "sgpo.ended_by", CANCELLED_MESSAGE)
    return "KILLED"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]  # MLflow caps param values
    return out


class StageTracker:
    """Logs into one stage's nested run. A no-op when tracking is off."""

    def __init__(self, client: Any = None, run_id: str | None = None, stage: str = "training"):
        self.client, self.run_id, self.stage = client, run_id, stage
        # per-step trainer logs, kept also when MLflow is off: the stage's manifest records them
        # (`train_history`), so the report's training curves need no tracking server
        self.history: list[dict[str, float]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        if self.client:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in _flatten(params).items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.client:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.client:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))


def _run_logger() -> logging.Logger:
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return log


@contextmanager
def stage_run(
    handle: TrackingHandle | None, stage: str, *, tags: dict[str, str] | None = None
) -> Iterator[StageTracker]:
    if handle is None:
        yield StageTracker(stage=stage)
        return
    client = _client(handle.uri)
    run = client.create_run(
        handle.experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": handle.parent_run_id, "sgpo.core.stage": stage, **(tags or {})},
    )
    tracker = StageTracker(client, run.info.run_id, stage=stage)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status=_ended_by_error(client, run.info.run_id))
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
