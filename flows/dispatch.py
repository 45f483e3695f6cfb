"""Where a stage runs: in this process, or as its own flow run on the CUDA work pool.

`execution.mode == "local"`: every stage is a task in the flow's process (the default).
`execution.mode == "distributed"`: CPU stages still run in-process (on the worker that runs the
pipeline or evaluation flow); a GPU stage first looks for its finished artifact in the shared store
(a cached stage dispatches nothing), else starts a flow run of its deployment
`<stage>/<prefix>-<stage>`, waits for that child flow run, and reads the artifact back from the
store by cache key. The wait is a task run named after the stage in the calling flow run, and the
child's parent task run: the UI lists the stage Running while it runs on the pool, with a
`<stage>-progress` artifact that follows the child's own (training steps, judged answers). The
child runs the same stage (`flows.stages`), so both paths publish the same artifact under the same
key. A GPU stage that calls an LLM (judge) sends the endpoint the flow resolved in its cfg, so the
GPU worker must reach it; an endpoint on this machine's loopback (the embedded stand-in LLM, which
lives in this flow's process) cannot be reached from another host, so such a stage runs here
instead, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from artifacts.refs import ArtifactRef
from flows.stages import deployment_name
from sgpo.config import ExecutionConfig
from sgpo.core import Stage, StageContext, stage_logger
from sgpo.core.cancel import cancelled_state, reraise_cancellation, run_cancelled
from sgpo.core.prefect_tasks import run_task
from sgpo.core.progress import progress_key
from sgpo.core.run import StageOutcome
from tasks import GPU_STAGES

POLL_INTERVAL_S = 2.0


def show_cached_task(label: str, ref: ArtifactRef) -> None:
    """A GPU stage found in the store dispatches no child run: a task run named after the stage ends in
    the Cached state with a link to its artifact, so the run's graph and Task Runs tab still show it.
    Never fails the stage."""
    try:
        from prefect import task
        from prefect.context import FlowRunContext
        from prefect.states import Completed

        if FlowRunContext.get() is None:
            return

        @task(name="cached-stage", task_run_name=label)
        def cached_stage(uri: str, content_hash: str, produced_by: str | None) -> Any:
            from prefect.artifacts import create_link_artifact

            create_link_artifact(
                link=uri,
                link_text=f"{label} (cached) {uri}",
                description=f"Stage {label}: reused from the store (content {content_hash[:12]}, "
                f"made by run {produced_by or 'unknown'})",
            )
            return Completed(name="Cached", message=f"reused {uri}", data=uri)

        cached_stage(ref.uri, ref.content_hash, ref.produced_by, return_state=True)
    except Exception as e:  # noqa: BLE001 - the API is down: the stage line in the logs still says it
        stage_logger("dispatch").debug("no cached task run for %s: %s", label, e)


class StageDispatchError(RuntimeError):
    """A GPU stage could not be dispatched, or its child flow run did not finish with an artifact."""


def _check_deployment(name: str, execution: ExecutionConfig) -> Any:
    """The deployment, or a clear error; warns when no worker polls its pool (the run would wait)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise StageDispatchError(
            "execution.mode=distributed needs a Prefect server with the GPU-stage deployments and a worker on "
            f"pool {execution.cuda_work_pool!r}; PREFECT_API_URL is not set (this run uses a throwaway local API). "
            "See docs/cluster.md, or use execution.mode=local"
        )
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise StageDispatchError(
                f"no deployment {name!r} on the Prefect server at {client.api_url}: "
                "register the deployments with `sgpo deploy` (see docs/cluster.md)"
            ) from None
        if dep.work_pool_name != execution.cuda_work_pool:
            raise StageDispatchError(
                f"deployment {name!r} is on work pool {dep.work_pool_name!r}, but execution.cuda_work_pool is "
                f"{execution.cuda_work_pool!r}: redeploy with `sgpo deploy --cuda-pool {execution.cuda_work_pool}` "
                "or fix the configuration"
            )
        try:
            from prefect.client.schemas.objects import WorkerStatus

            workers = client.read_workers_for_work_pool(dep.work_pool_name)
            if not any(w.status == WorkerStatus.ONLINE for w in workers):
                stage_logger("dispatch").warning(
                    "no worker is online on work pool %r: %s waits until one starts "
                    "(`prefect worker start --pool %s`)",
                    dep.work_pool_name,
                    name,
                    dep.work_pool_name,
                )
        except Exception:  # the check is advice only
            pass
    return dep


def check_not_on_the_cuda_pool(execution: ExecutionConfig) -> None:
    """Distributed mode from a flow run that itself runs on the CUDA pool is refused before any work: its
    GPU stages would wait for a slot of the pool it holds (a worker with `--limit 1` never frees it)."""
    if execution.mode != "distributed":
        return
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    pool = getattr(getattr(ctx, "flow_run", None), "work_pool_name", None) if ctx else None
    if pool and pool == execution.cuda_work_pool:
        raise StageDispatchError(
            f"execution.mode=distributed, but this flow run itself runs on the GPU stages' work pool {pool!r}: "
            "its stages would wait for a slot of the pool it holds. Run it with execution.mode=local there (its "
            "stages then use this worker's GPUs), or deploy the flow on the cpu pool"
        )


def is_loopback(url: str | None) -> bool:
    """True for an http(s) URL whose host is this machine only (localhost, 127.x, ::1)."""
    host = (urlsplit(url).hostname or "") if url else ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def dispatch_stage(
    label: str,
    st: Stage,
    cfg: Any,
    inputs: Mapping[str, ArtifactRef],
    params: Mapping[str, Any] | None,
    ctx: StageContext,
    execution: ExecutionConfig,
) -> StageOutcome:
    """Run one stage where the configuration says: (artifact, cached, note)."""
    if execution.mode != "distributed" or st.name not in GPU_STAGES:
        return run_task(st, cfg, ctx, inputs, params, label=label)

    log = stage_logger(st.name)
    cfg = st.coerce(cfg)
    key = st.cache_key(cfg, inputs, params)
    store = ctx.open_store()
    note = ""
    if not ctx.refresh:
        ref, damage = store.lookup(st.name, key)
        if ref is not None:
            ref = st.reused(ref, cfg)
            log.info("%s: finished artifact in the store (%s); nothing dispatched", label, ref.uri)
            show_cached_task(label, ref)
            return StageOutcome(ref, True)
        if damage:
            note = f"recomputed: its stored artifact was damaged ({'; '.join(damage)})"
    if st.llm and is_loopback(url := getattr(cfg, st.llm).base_url):
        log.info(
            "%s: its LLM endpoint %s is on this machine's loopback (the embedded stand-in), which a GPU "
            "worker on another host cannot reach: running it here. Set %s.%s.base_url to an address the "
            "GPU workers reach to run it on pool %r (docs/cluster.md)",
            label,
            url,
            st.section,
            st.llm,
            execution.cuda_work_pool,
        )
        return run_task(st, cfg, ctx, inputs, params, label=label)

    name = deployment_name(st.name, execution.deployment_prefix)
    dep = _check_deployment(name, execution)
    parameters = {
        "inputs": {k: v.model_dump(mode="json") for k, v in inputs.items()},
        "cfg": cfg.model_dump(mode="json"),
        "ctx": ctx.model_dump(mode="json"),
        "params": dict(params) if params else None,
    }
    log.info("%s: dispatching to deployment %s on work pool %r", label, name, dep.work_pool_name)

    def dispatched() -> ArtifactRef:
        child = run_child(
            name=name,
            parameters=parameters,
            flow_run_name=f"{label}-{key[:8]}",
            tags=["sgpo", f"sgpo-stage:{st.name}"],
            label=label,
            work_pool=dep.work_pool_name,
        )
        state = child.state
        if state is None or not state.is_completed():
            what = f"{state.type.value} ({state.name})" if state is not None else "without a state"
            message = f": {state.message}" if state is not None and state.message else ""
            raise StageDispatchError(
                f"GPU stage '{label}' failed: child flow run '{child.name}' ({child.id}) of deployment "
                f"{name} on work pool {dep.work_pool_name!r} ended {what}{message}. Finished stages stay "
                "in the store; retry the pipeline run to resume here."
            )
        ref = store.find(st.name, key)
        if ref is None:
            raise StageDispatchError(
                f"GPU stage '{label}': child flow run '{child.name}' ({child.id}) completed but the "
                f"store {store.url} holds no {st.name} artifact for key {key[:16]}: do the CUDA worker "
                "and the pipeline use the same store (store.url, storage_options, credentials)?"
            )
        log.info("%s: child flow run %s completed -> %s", label, child.name, ref.uri)
        return ref

    ref = as_task_run(label, dispatched, tags=["sgpo", "gpu", f"pool:{dep.work_pool_name}"])
    return StageOutcome(ref, ref.produced_by != ctx.run_id, note)


def as_task_run(label: str, fn: Callable[[], ArtifactRef], tags: list[str]) -> ArtifactRef:
    """`fn()` as a task run named `label` of the current flow run (the UI's task list and graph show
    the stage, Running while its child runs on the CUDA pool); `fn()` itself outside a flow run.
    Its error fails the task and is raised here; a cancelled flow run ends it Cancelled (not
    Crashed) and the signal goes on to the flow."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return fn()

    @task(
        name="gpu-stage",
        task_run_name=label,
        description="A GPU stage running as its own flow run on the CUDA work pool",
        cache_policy=NO_CACHE,
        persist_result=False,
        tags=tags,
    )
    def gpu_stage() -> Any:
        try:
            return fn()
        except BaseException:
            if run_cancelled():
                return cancelled_state(f"stage {label}")
            raise

    # a task key per stage (Prefect numbers a task's calls per key within a flow run, and an attempt
    # of the run dispatches only the stages that are not in the store yet): no two stages' task runs
    # ever share an identity, whatever a Retry dispatches
    gpu_stage.task_key = f"sgpo-gpu-stage-{label}"
    state = gpu_stage(return_state=True)
    if state.is_cancelled():
        reraise_cancellation()
    return state.result()  # raises the dispatch error


def run_child(
    *,
    name: str,
    parameters: dict[str, Any],
    flow_run_name: str,
    tags: list[str],
    label: str,
    work_pool: str,
) -> Any:
    """Create a flow run of deployment `name` and wait for it to end; returns the child run.

    Inside a task run, the child is that task run's subflow (its parent task run), so the pipeline's
    graph shows it under the stage; the child's newest progress artifact (a training stage's steps,
    the judge's calls) is copied into a `<label>-progress` artifact of the task run as it changes.
    When the flow run is cancelled meanwhile, the child is cancelled too (its worker stops it)."""
    from prefect import get_client
    from prefect.context import TaskRunContext
    from prefect.states import Cancelling, Scheduled

    task_run = TaskRunContext.get()
    with get_client(sync_client=True) as client:
        child = client.create_flow_run_from_deployment(
            client.read_deployment_by_name(name).id,
            parameters=parameters,
            state=Scheduled(),
            name=flow_run_name,
            tags=tags,
            parent_task_run_id=task_run.task_run.id if task_run else None,
        )
        progress = ChildProgress(label, child, work_pool) if task_run else None
        try:
            while True:
                child = client.read_flow_run(child.id)
                if progress is not None:
                    progress.update(client, child)
                if child.state is not None and child.state.is_final():
                    return child
                time.sleep(POLL_INTERVAL_S)
        except BaseException:
            if run_cancelled():
                client.set_flow_run_state(
                    child.id, Cancelling(message=f"the pipeline run was cancelled during {label}")
                )
            raise


class ChildProgress:
    """The child flow run's progress, mirrored on the dispatching task run: one progress artifact
    (key `<label>-progress`, as the child's own) whose value is the child's newest progress artifact
    and whose description says where the child is (waiting for a worker, running, its end state).
    Never fails the stage: an API error switches it off."""

    def __init__(self, label: str, child: Any, pool: str):
        self.label, self.child_name, self.pool = label, child.name, pool
        self.artifact_id: Any = None
        self.last: tuple[float, str] | None = None
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                progress=0.0,
                key=progress_key(label),
                description=self._describe(child.state, None),
                _sync=True,
            )
        except Exception as e:  # noqa: BLE001
            stage_logger("dispatch").debug("no progress artifact for %s: %r", label, e)

    def _describe(self, state: Any, child_description: str | None) -> str:
        where = f"child flow run {self.child_name} on work pool {self.pool!r}"
        if state is None or state.is_scheduled() or state.is_pending():
            status = f"waiting for a worker ({state.name if state else 'no state'})"
        else:
            status = state.name
        return f"{self.label}: {child_description or status} ({where}: {status})"

    def update(self, client: Any, child: Any) -> None:
        if self.artifact_id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact
            from prefect.client.schemas.filters import (
                ArtifactFilter,
                ArtifactFilterFlowRunId,
                ArtifactFilterType,
            )
            from prefect.client.schemas.sorting import ArtifactSort

            newest = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[child.id]),
                    type=ArtifactFilterType(any_=["progress"]),
                ),
                sort=ArtifactSort.UPDATED_DESC,
                limit=1,
            )
            value = float(newest[0].data) if newest else 0.0
            if child.state is not None and child.state.is_completed():
                value = 100.0
            described = self._describe(child.state, newest[0].description if newest else None)
            if (value, described) != self.last:
                update_progress_artifact(self.artifact_id, value, description=described, _sync=True)
                self.last = (value, described)
        except Exception as e:  # noqa: BLE001
            stage_logger("dispatch").debug("progress of %s not mirrored: %r", self.label, e)
            self.artifact_id = None
