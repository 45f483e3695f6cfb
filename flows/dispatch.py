"""Where a stage runs: in this process, or as its own flow run on the CUDA work pool.

`execution.mode == "local"`: every stage is a task in the pipeline's process (the default).
`execution.mode == "distributed"`: CPU stages still run in-process (on the CPU pool's worker
that runs the pipeline); a GPU stage first looks for its finished artifact in the shared store
(a cached stage dispatches nothing), else calls its deployment `<stage>/<prefix>-<stage>` with
`run_deployment`, waits for the child flow run, and reads the artifact back from the store by
cache key. The child runs the same stage code (`flows.stages`), so both paths publish the same
artifact under the same key.
"""
from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

from artifacts.refs import ArtifactRef
from flows.stages import GPU_STAGES, deployment_name
from sgpo.config import ExecutionConfig
from tasks.common import StageContext, stage_logger

POLL_INTERVAL_S = 2.0


class StageDispatchError(RuntimeError):
    """A GPU stage could not be dispatched, or its child flow run did not finish with an artifact."""


def stage_module(stage: str) -> Any:
    return importlib.import_module(f"tasks.{stage}")


def stage_cache_key(stage: str, params: dict[str, Any]) -> str:
    """The stage's own cache key (the same one its task and `run_<stage>` use)."""
    return stage_module(stage).cache_key(**params)


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def run_in_process(label: str, task: Any, params: dict[str, Any], ctx: StageContext,
                   result_storage: Any = None) -> tuple[ArtifactRef, bool]:
    """The task in this process, as the pipeline runs every stage in local mode."""
    state = task.with_options(result_storage=result_storage, refresh_cache=ctx.refresh or None, task_run_name=label)(
        **params, ctx=ctx, return_state=True
    )
    ref: ArtifactRef = state.result()
    return ref, state.name == "Cached" or ref.produced_by != ctx.run_id


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
                    "(`prefect worker start --pool %s`)", dep.work_pool_name, name, dep.work_pool_name)
        except Exception:  # the check is advice only
            pass
    return dep


def dispatch_stage(
    label: str,
    stage: str,
    task: Any,
    params: dict[str, Any],
    ctx: StageContext,
    execution: ExecutionConfig,
    *,
    result_storage: Any = None,
) -> tuple[ArtifactRef, bool]:
    """Run one stage where the configuration says; returns (artifact, cached).

    `params` are the stage task's inputs without `ctx` (e.g. base=, data=, cfg= for sft).
    """
    if execution.mode != "distributed" or stage not in GPU_STAGES:
        return run_in_process(label, task, params, ctx, result_storage)

    from prefect.deployments import run_deployment

    log = stage_logger(stage)
    key = stage_cache_key(stage, params)
    store = ctx.open_store()
    if (ref := ctx.reuse(store, stage, key)) is not None:
        log.info("%s: finished artifact in the store (%s); nothing dispatched", label, ref.uri)
        return ref, True

    name = deployment_name(stage, execution.deployment_prefix)
    dep = _check_deployment(name, execution)
    parameters = {k: _jsonable(v) for k, v in params.items()}
    parameters["ctx"] = ctx.model_dump(mode="json")
    log.info("%s: dispatching to deployment %s on work pool %r", label, name, dep.work_pool_name)
    child = run_deployment(
        name=name,
        parameters=parameters,
        timeout=None,  # GPU stages take hours; the child's own state ends the wait
        poll_interval=POLL_INTERVAL_S,
        flow_run_name=f"{label}-{key[:8]}",
        tags=["sgpo", f"sgpo-stage:{stage}"],
    )
    state = child.state
    if state is None or not state.is_completed():
        what = f"{state.type.value} ({state.name})" if state is not None else "without a state"
        message = f": {state.message}" if state is not None and state.message else ""
        raise StageDispatchError(
            f"GPU stage '{label}' failed: child flow run '{child.name}' ({child.id}) of deployment {name} "
            f"on work pool {dep.work_pool_name!r} ended {what}{message}. Finished stages stay in the store; "
            "retry the pipeline run to resume here."
        )
    ref = store.find(stage, key)
    if ref is None:
        raise StageDispatchError(
            f"GPU stage '{label}': child flow run '{child.name}' ({child.id}) completed but the store "
            f"{store.url} holds no {stage} artifact for key {key[:16]}: do the CUDA worker and the pipeline "
            "use the same store (store.url, storage_options, credentials)?"
        )
    log.info("%s: child flow run %s completed -> %s", label, child.name, ref.uri)
    return ref, ref.produced_by != ctx.run_id
