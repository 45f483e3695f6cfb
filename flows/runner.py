"""Running one stage inside a flow: where (dispatch), cached or not, how long, and what it made.

Shared by every flow (sgpo, evaluate): each stage call goes through `StageRunner`, which runs the
stage's task in-process or on the CUDA pool (flows.dispatch), turns its error into a
`StageFailed` that names the stage, prints and logs one line per stage, and records cached
stages in MLflow.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from artifacts.refs import ArtifactRef
from sgpo.config import ExecutionConfig, StoreConfig
from tasks.common import StageContext


class StageFailed(RuntimeError):
    """A stage's error, with the stage named; finished stages stay cached for the next run."""


class StageReport(BaseModel):
    stage: str
    status: str = Field(description="ran | cached")
    seconds: float
    uri: str
    content_hash: str
    summary: dict[str, Any] = Field(default_factory=dict)


def result_storage(store: StoreConfig) -> Any:
    """Where Prefect keeps its cache records: beside the artifacts, so any process finds them."""
    from artifacts.store import normalize_url

    url = normalize_url(store.url)
    if url.startswith("file://"):
        path = Path(url[len("file://"):]) / "_prefect"
        path.mkdir(parents=True, exist_ok=True)
        return path
    from prefect.filesystems import RemoteFileSystem

    from artifacts.hashing import sha256_text

    slug = f"sgpo-results-{sha256_text(url)[:10]}"
    # Only the endpoint and other non-secret options: credentials come from the environment.
    RemoteFileSystem(basepath=f"{url}/_prefect", settings=store.storage_options).save(slug, overwrite=True)
    return f"remote-file-system/{slug}"


class StageRunner:
    """Call as `run(label, task, **params)`; `label` is the stage name, optionally `name[suffix]`."""

    def __init__(self, ctx: StageContext, force: list[str], execution: ExecutionConfig | None = None, *, width: int = 18):
        self.ctx, self.force = ctx, set(force)
        self.execution = execution or ExecutionConfig()
        self.storage = result_storage(ctx.store)
        self.reports: list[StageReport] = []
        self.width = width
        self.log = get_run_logger()

    def __call__(self, label: str, task: Any, **params: Any) -> ArtifactRef:
        from flows.dispatch import dispatch_stage

        stage = label.split("[")[0]
        forced = stage in self.force or label in self.force
        ctx = self.ctx.model_copy(update={"refresh": forced})
        t0 = time.perf_counter()
        try:
            ref, cached = dispatch_stage(label, stage, task, params, ctx, self.execution, result_storage=self.storage)
        except Exception as e:
            raise StageFailed(f"stage '{label}' failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        report = StageReport(stage=label, status="cached" if cached else "ran", seconds=round(seconds, 2),
                             uri=ref.uri, content_hash=ref.content_hash, summary=ref.summary)
        self.reports.append(report)
        line = f"[sgpo] {label:<{self.width}} {report.status:<6} {seconds:7.1f}s  {ref.uri}"
        print(line, flush=True)
        self.log.info(line)
        if cached and self.ctx.tracking:
            from sgpo.tracking import stage_run

            with stage_run(self.ctx.tracking, label, tags={"sgpo.cached": "true", "sgpo.artifact_uri": ref.uri}):
                pass
        return ref


def with_endpoint(section: Any, base_url: str | None, model: str) -> Any:
    """`section` with its judge/annotator endpoint pointed at the embedded server, unless configured."""
    if section.endpoint.base_url or base_url is None:
        return section
    return section.model_copy(update={"endpoint": section.endpoint.model_copy(update={"base_url": base_url, "model": model})})
