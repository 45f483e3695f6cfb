"""MLflow tracking with explicit run ids (MLflow's active run is thread-local, Prefect tasks
may run in other threads or processes): one parent run per pipeline run, a nested run per stage.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

log = logging.getLogger(__name__)


class TrackingHandle(BaseModel):
    """What a stage needs to log into the pipeline's MLflow run (crosses process boundaries)."""

    uri: str
    experiment_id: str
    parent_run_id: str


def _normalize_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_pipeline_run(uri: str, experiment: str, run_name: str, *, artifact_root: str | None, tags: dict[str, str]) -> TrackingHandle:
    uri = _normalize_uri(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        # Keep MLflow's own artifacts beside the database, not in ./mlruns of whatever cwd.
        exp_id = client.create_experiment(experiment, artifact_location=artifact_root)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    return TrackingHandle(uri=uri, experiment_id=exp_id, parent_run_id=run.info.run_id)


def end_pipeline_run(handle: TrackingHandle, status: str = "FINISHED") -> None:
    _client(handle.uri).set_terminated(handle.parent_run_id, status=status)


@contextmanager
def pipeline_run(cfg: Any, run_name: str, *, tags: dict[str, str]) -> Iterator[TrackingHandle | None]:
    """The parent MLflow run of one flow run (None when `cfg.enabled` is off): FINISHED when the
    block ends, FAILED when it raises. `cfg` is a TrackingConfig."""
    if not cfg.enabled:
        yield None
        return
    uri = cfg.mlflow_uri
    # MLflow's own artifacts live beside a SQLite database, not in ./mlruns of whatever cwd.
    root = str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlruns") if uri.startswith("sqlite:///") else None
    handle = start_pipeline_run(uri, cfg.experiment, run_name, artifact_root=root, tags=tags)
    try:
        yield handle
    except BaseException:
        end_pipeline_run(handle, "FAILED")
        raise
    end_pipeline_run(handle, "FINISHED")


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

    def __init__(self, client: Any = None, run_id: str | None = None):
        self.client, self.run_id = client, run_id

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
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.client:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def trainer_callback(self):
        """A transformers TrainerCallback that sends the trainer's logs to this run."""
        from transformers import TrainerCallback

        tracker = self

        class _MlflowStageCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    tracker.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

        return _MlflowStageCallback()


@contextmanager
def stage_run(handle: TrackingHandle | None, stage: str, *, tags: dict[str, str] | None = None) -> Iterator[StageTracker]:
    if handle is None:
        yield StageTracker()
        return
    client = _client(handle.uri)
    run = client.create_run(
        handle.experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": handle.parent_run_id, "sgpo.stage": stage, **(tags or {})},
    )
    tracker = StageTracker(client, run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
