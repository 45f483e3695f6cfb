"""A stage as a Prefect task: `resolve_stage` inside, retries on the decorator, and a Cached state
when the store held the artifact. No Prefect cache records: a record that says "done" without
checking the artifact would win over the store's own checked lookup (a truncated or deleted
artifact would be reported cached). The flows' own results are small JSON (`RESULT_OPTIONS`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.core.cancel import cancelled_state, reraise_cancellation, run_cancelled
from sgpo.core.context import StageContext
from sgpo.core.logs import warnings_to_run_logs
from sgpo.core.run import StageOutcome, resolve_stage
from sgpo.core.stage import Stage

# The flows' results (a report, an ArtifactRef): small JSON, persisted for the UI and `run_deployment`.
RESULT_OPTIONS: dict[str, Any] = dict(persist_result=True, result_serializer="json")
TRANSIENT_ERRORS = (TimeoutError, ConnectionError)
_TASKS: dict[str, Any] = {}


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
    """The stage as a Prefect task: Prefect shows its state (Cached when the store held the checked
    artifact), it does not decide it: no Prefect cache records, the store is the one cache."""
    if st.name in _TASKS:
        return _TASKS[st.name]
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.states import Completed

    warnings_to_run_logs()  # a lease taken over, a damaged artifact: in the run's logs too

    def run(
        inputs: dict[str, ArtifactRef | None],
        cfg: Any,
        ctx: StageContext,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            outcome = resolve_stage(st, cfg, ctx, inputs, params)
        except BaseException:
            if run_cancelled():  # the run's Cancel, not a crash: the task ends Cancelled
                return cancelled_state(f"stage {st.name}")
            raise
        if outcome.cached:
            return Completed(
                name="Cached", message=f"in the store: {outcome.ref.uri}", data=outcome
            )
        return outcome

    run.__name__ = run.__qualname__ = f"{st.name}_task"
    run.__doc__ = st.description
    _TASKS[st.name] = task(
        name=st.name,
        description=st.description,
        tags=["gpu"] if st.gpu else [],
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=st.retries,
        retry_delay_seconds=st.retry_delay_s,
        retry_condition_fn=_retry_condition,
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
) -> StageOutcome:
    """Run the stage's task here (in a flow, or a stage's own flow on a worker): the artifact, and
    whether the store held it (`resolve_stage`)."""
    state = prefect_task(st).with_options(task_run_name=label or st.name)(
        inputs=dict(inputs),
        cfg=cfg,
        ctx=ctx,
        params=dict(params) if params else None,
        return_state=True,
    )
    if state.is_cancelled():
        reraise_cancellation()  # the flow ends Cancelled too, and runs no further stage
    return state.result()  # raises the stage's error
