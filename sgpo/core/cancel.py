"""Telling a cancelled run from a crash.

Cancelling a flow run (the UI's Cancel, `prefect flow-run cancel`) makes its worker send the run's
process SIGTERM, which Prefect raises as `TerminationSignal` wherever the process is. Its flow
engine knows that signal means "cancel"; its task engine in Prefect 3.8 does not and ends the
running task `Crashed`, logging "Crash detected!". The stage task (sgpo.core.prefect_tasks), the
dispatch task (flows.dispatch) and the MLflow runs (sgpo.core.tracking) ask `run_cancelled` and end
Cancelled / KILLED instead, then hand the signal on so that the flow itself ends Cancelled.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

_log = logging.getLogger(__name__)
CANCELLED_MESSAGE = "the flow run was cancelled"


def _flow_run_id() -> Any:
    if "prefect" not in sys.modules:  # no run without it (and no second of importing it)
        return None
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except Exception:  # noqa: BLE001 - no prefect: no run
        return None
    task = TaskRunContext.get()
    if task is not None:
        return task.task_run.flow_run_id
    flow = FlowRunContext.get()
    return flow.flow_run.id if flow is not None and flow.flow_run is not None else None


def run_cancelled(exc: BaseException | None = None) -> bool:
    """Whether the flow run this code runs in is being cancelled: the worker said so on Prefect's
    control channel (the reason of a TerminationSignal), or the server's state of the run is
    Cancelling / Cancelled. False outside a Prefect run, and for anything it cannot tell."""
    flow_run_id = _flow_run_id()
    if flow_run_id is None:
        return False
    try:
        from prefect._internal.control_listener import get_intent

        if get_intent() == "cancel":
            return True
    except Exception:  # noqa: BLE001 - a Prefect without the control channel: ask the server
        pass
    try:
        from prefect import get_client
        from prefect.client.schemas.objects import StateType

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)
    except Exception as e:  # noqa: BLE001 - the API is gone too: a crash, as Prefect says
        _log.debug("could not read the state of flow run %s: %r", flow_run_id, e)
        return False


def cancelled_state(what: str) -> Any:
    """A Cancelled state for a task that a cancellation interrupted (returned by the task function:
    Prefect records it as the task's final state)."""
    from prefect.states import Cancelled

    return Cancelled(message=f"{what}: {CANCELLED_MESSAGE}")


def reraise_cancellation() -> None:
    """In the flow, after a task ended Cancelled: the signal again, so the flow engine cancels the
    run (it reads the worker's intent) instead of going on with the next stage."""
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(signal.SIGTERM)
