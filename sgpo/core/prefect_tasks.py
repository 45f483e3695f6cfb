"""A stage as a Prefect task: the same key as `run_stage`, JSON results, retries on the decorator,
and where Prefect keeps its cache records (beside the artifacts, so any process finds them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from artifacts.hashing import sha256_text
from artifacts.refs import ArtifactRef
from artifacts.store import normalize_url
from sgpo.config import StoreConfig
from sgpo.core.cancel import cancelled_state, reraise_cancellation, run_cancelled
from sgpo.core.context import StageContext
from sgpo.core.run import run_stage
from sgpo.core.stage import Stage

# Prefect task/flow defaults: results are the small JSON refs, persisted so a later run reuses them.
RESULT_OPTIONS: dict[str, Any] = dict(persist_result=True, result_serializer="json")
TRANSIENT_ERRORS = (TimeoutError, ConnectionError)
_TASKS: dict[str, Any] = {}


def result_storage(store: StoreConfig) -> Any:
    """Where Prefect keeps its cache records: beside the artifacts, so any process finds them."""
    url = normalize_url(store.url)
    if url.startswith("file://"):
        path = Path(url[len("file://") :]) / "_prefect"
        path.mkdir(parents=True, exist_ok=True)
        return path
    from prefect.filesystems import RemoteFileSystem

    slug = f"sgpo-results-{sha256_text(url)[:10]}"
    # Only the endpoint and other non-secret options: credentials come from the environment.
    RemoteFileSystem(basepath=f"{url}/_prefect", settings=store.storage_options).save(
        slug, overwrite=True
    )
    return f"remote-file-system/{slug}"


def error_is_transient(exc: BaseException) -> bool:
    """Worth a task-level retry: an error that says so (`retriable`, e.g. an LLM call that ran out of
    retries on 429/5xx/timeouts, a hub that did not answer), or a bare timeout / connection error.
    Config errors, bad data, 4xx answers and a missing endpoint fail at once: retrying cannot help."""
    flag = getattr(exc, "retriable", None)
    if flag is not None:
        return bool(flag)
    return isinstance(exc, TRANSIENT_ERRORS)


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:  # the stage's own error
        return error_is_transient(exc)
    return False


def prefect_task(st: Stage) -> Any:
    """The stage as a Prefect task: same key as `run_stage`, JSON results, retries on the decorator."""
    if st.name in _TASKS:
        return _TASKS[st.name]
    from prefect import task

    def run(
        inputs: dict[str, ArtifactRef | None],
        cfg: Any,
        ctx: StageContext,
        params: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        try:
            return run_stage(st, cfg, ctx, inputs, params)
        except BaseException:
            if run_cancelled():  # the run's Cancel, not a crash: the task ends Cancelled
                return cancelled_state(f"stage {st.name}")
            raise

    run.__name__ = run.__qualname__ = f"{st.name}_task"
    run.__doc__ = st.description
    _TASKS[st.name] = task(
        name=st.name,
        description=st.description,
        tags=["gpu"] if st.gpu else [],
        cache_key_fn=lambda _ctx, p: st.cache_key(
            st.coerce(p["cfg"]), p["inputs"], p.get("params")
        ),
        retries=st.retries,
        retry_delay_seconds=st.retry_delay_s,
        retry_condition_fn=_retry_condition,
        **RESULT_OPTIONS,
    )(run)
    return _TASKS[st.name]


def run_task(
    st: Stage,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef | None],
    params: Mapping[str, Any] | None = None,
    *,
    label: str | None = None,
) -> tuple[ArtifactRef, bool]:
    """Run the stage's task here (in a flow, or a stage's own flow on a worker); returns (artifact, cached).

    Cached = Prefect's own cache record hit, or the store already held the artifact (made by
    another run: its `produced_by` is not this run)."""

    def call(refresh: bool | None) -> Any:
        return prefect_task(st).with_options(
            result_storage=result_storage(ctx.store),
            refresh_cache=refresh,
            task_run_name=label or st.name,
        )(
            inputs=dict(inputs),
            cfg=cfg,
            ctx=ctx,
            params=dict(params) if params else None,
            return_state=True,
        )

    state = call(ctx.refresh or None)
    if state.is_cancelled():
        reraise_cancellation()  # the flow ends Cancelled too, and runs no further stage
    ref: ArtifactRef = state.result()  # raises the stage's error
    if ref.kind in ("table", "model") and not (store := ctx.open_store()).holds(ref):
        # Prefect's cache record names the artifact where the store was when it was made (a copied or
        # moved store): the same key, looked up where the store is now (or recomputed if absent there).
        if (here := store.find(ref.stage, ref.cache_key)) is not None:
            return here, True
        state = call(True)
        ref = state.result()
    return ref, state.name == "Cached" or ref.produced_by != ctx.run_id
