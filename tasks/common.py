"""What every stage shares: where artifacts go, where metrics go, who is running.

A stage module has: `STAGE` (its name), `CODE_VERSION` (bump when its logic changes what it
produces), `cache_key(...)` (pure, from inputs' content hashes + its config section), a plain
`run_<stage>(inputs..., cfg, ctx) -> ArtifactRef`, and a thin Prefect task around it whose
`cache_key_fn` calls the same `cache_key`. The function checks the store first, so a stage
whose artifact is already published (by any run, any process) is not recomputed even if
Prefect's own cache record is missing.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict

from artifacts.refs import ArtifactRef
from artifacts.store import ArtifactStore
from sgpo.config import StoreConfig
from sgpo.tracking import StageTracker, TrackingHandle, stage_run

# Prefect task defaults: results are the small JSON refs, persisted so a later run reuses them.
TASK_DEFAULTS: dict[str, Any] = dict(persist_result=True, result_serializer="json")


class StageContext(BaseModel):
    """Infrastructure a stage needs besides its own config (JSON-serialisable, crosses processes)."""

    model_config = ConfigDict(extra="forbid")

    store: StoreConfig
    tracking: TrackingHandle | None = None
    run_id: str | None = None
    trust_remote_code: bool = False
    refresh: bool = False  # `force`: recompute even if the store holds a finished artifact

    def reuse(self, store: ArtifactStore, stage: str, key: str) -> ArtifactRef | None:
        return None if self.refresh else store.find(stage, key)

    def open_store(self) -> ArtifactStore:
        return ArtifactStore(self.store.url, self.store.storage_options)

    @contextlib.contextmanager
    def tracked(self, stage: str, params: dict[str, Any]) -> Iterator[StageTracker]:
        with stage_run(self.tracking, stage, tags={"sgpo.cached": "false"}) as tracker:
            tracker.log_params(params)
            yield tracker


def inputs_lineage(inputs: dict[str, ArtifactRef]) -> dict[str, dict[str, Any]]:
    return {k: {"uri": v.uri, "content_hash": v.content_hash, "stage": v.stage} for k, v in inputs.items()}


def manifest(
    stage: str,
    code_version: str,
    config: dict[str, Any],
    inputs: dict[str, ArtifactRef],
    *,
    prompts: dict[str, str] | None = None,
    seeds: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage written beside every artifact: enough to trace and reproduce it."""
    return {
        "stage": stage,
        "code_version": code_version,
        "config": config,
        "prompts": prompts or {},
        "seeds": seeds or {},
        "parents": inputs_lineage(inputs),
        **(extra or {}),
    }


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"sgpo-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stage_logger(stage: str) -> logging.Logger:
    """Prefect's run logger inside a run (shows in the UI), a plain logger outside one."""
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return logging.getLogger(f"sgpo.{stage}")
