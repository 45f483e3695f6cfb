"""Running a stage: the finished artifact for its inputs and config, from the store or made now.

`run_stage` is the one way a stage runs, whoever calls it (a flow's Prefect task, a CUDA-pool flow,
`python -m tasks.<stage>`): store lookup by cache key, the stage's preflight, a lease on the key (one
run computes a key at a time, so paid calls are never made twice), then the function with a `Job`,
in this process or on the processes its launcher plans (`run_rank` is one of them).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any, NamedTuple

from artifacts.lease import Lease, LeaseLost, acquire_or_wait, holding
from artifacts.refs import ArtifactRef
from sgpo.core.context import StageContext
from sgpo.core.job import Job, stage_logger
from sgpo.core.launch import launch_stage
from sgpo.core.ranks import is_main_process, world_size
from sgpo.core.stage import Stage


class StageOutcome(NamedTuple):
    """What running a stage gave: the artifact, whether it was found finished in the store (checked)
    rather than made by this call, and a note for the stage's line (e.g. why it was recomputed)."""

    ref: ArtifactRef
    cached: bool
    note: str = ""


def _call(
    st: Stage, job: Job, inputs: Mapping[str, ArtifactRef | None], params: Mapping[str, Any]
) -> ArtifactRef:
    try:
        return st.fn(job, **{n: inputs.get(n) for n in st.inputs}, cfg=job.cfg, **params)
    finally:
        # What the stage loaded is freed before the next stage loads its own: a trainer holds its
        # model and optimiser in reference cycles that only the cycle collector frees, whenever it
        # next runs (a 135M model + Adam states is about 2 GB; measured: docs/usage.md).
        gc.collect()


def run_stage(
    st: Stage,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef | None],
    params: Mapping[str, Any] | None = None,
) -> ArtifactRef:
    """The finished artifact of `st` for these inputs and config: from the store, or made now."""
    return resolve_stage(st, cfg, ctx, inputs, params).ref


def resolve_stage(
    st: Stage,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef | None],
    params: Mapping[str, Any] | None = None,
) -> StageOutcome:
    """`run_stage`, saying whether the artifact came from the store. The store is the one source of
    truth for "done": an artifact counts only once its manifest is found and its data checked
    (sizes; content on a local store); a damaged one is recomputed, and the outcome says why."""
    cfg = st.coerce(cfg)
    params = dict(params or {})
    if unknown := sorted(set(params) - set(st.params)):
        raise ValueError(
            f"stage {st.name}: unknown parameter(s) {unknown}; it takes {list(st.params)}"
        )
    key = st.cache_key(cfg, inputs, params)
    store = ctx.open_store()
    log = stage_logger(st.name)
    note = ""
    if not ctx.refresh:
        ref, damage = store.lookup(st.name, key)
        if ref is not None:
            return StageOutcome(st.reused(ref, cfg), True)
        if damage:
            note = f"recomputed: its stored artifact was damaged ({'; '.join(damage)})"
            log.warning("stage %s: %s", st.name, note)
    if st.preflight is not None:
        st.preflight(st, cfg)
    refresh = ctx.refresh
    while True:
        # One run computes a (stage, key) at a time: a second one waits and reuses its artifact (or
        # fails at once with store.on_busy=fail), so paid calls are never made twice (artifacts.lease).
        lease = Lease(store, st.name, key, timeout_s=ctx.store.lease_timeout_s, run_id=ctx.run_id)
        made, waited = acquire_or_wait(
            lease,
            on_busy=ctx.store.on_busy,
            poll_s=ctx.store.lease_poll_s,
            finished=lambda: store.find(st.name, key),
            logger=log,
        )
        if made is not None:  # made by the run we waited for (forced or not: it is fresh)
            made = st.reused(made, cfg)
            return StageOutcome(made, True, note or "made by another run this one waited for")
        try:
            if (waited or not refresh) and (ref := store.find(st.name, key)) is not None:
                return StageOutcome(st.reused(ref, cfg), True, note)  # finished meanwhile
            return StageOutcome(
                _make(st, cfg, ctx, store, inputs, params, key, lease, log), False, note
            )
        except LeaseLost as e:
            # a stalled run whose lease was taken over: the new holder makes the artifact (reusing
            # the journaled answers); wait for it, or take over again if that run dies too
            log.warning("%s; waiting for the other run's artifact", e)
            note = "lost its lease while stalled: the artifact of the run that took it over"
            refresh = False
        finally:
            lease.release()


def _make(st, cfg, ctx, store, inputs, params, key, lease, log) -> ArtifactRef:
    """Run the stage's function (here, or on its launcher's processes) under `lease`."""
    if st.launcher is not None and (plan := st.launcher.plan(cfg, st.section)) is not None:
        return launch_stage(st, plan, cfg, ctx, inputs, params, key, log=log)
    job = Job(
        stage=st,
        key=key,
        ctx=ctx,
        store=store,
        cfg=cfg,
        inputs={n: r for n, r in inputs.items() if r is not None},
        params=params,
    )
    with holding(lease), job.tracking():
        ref = _call(st, job, inputs, params)
        if job.tracker is not None:
            job.tracker.set_tags({"sgpo.artifact_uri": ref.uri})
    return ref


def run_rank(
    st: Stage,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef | None],
    params: Mapping[str, Any],
    key: str,
) -> ArtifactRef | None:
    """One rank of a launched stage (sgpo.core.launch): the function, with the parent's key; rank 0
    tracks and publishes, the other ranks work alongside and publish nothing (they return None). No
    store lookup here: the parent did it, and every rank must take the same path."""
    cfg = st.coerce(cfg)
    if (mine := st.cache_key(cfg, inputs, params)) != key:
        raise RuntimeError(
            f"stage {st.name}: the launched rank computes cache key {mine[:16]}, the parent "
            f"{key[:16]}: the config did not survive the trip (sgpo versions differ?)"
        )
    main = is_main_process()
    job = Job(
        stage=st,
        key=key,
        ctx=ctx,
        store=ctx.open_store(),
        cfg=cfg,
        inputs={n: r for n, r in inputs.items() if r is not None},
        params=dict(params),
        is_main_process=main,
    )
    if not main:
        _call(st, job, inputs, params)
        return None
    with job.tracking():
        ref = _call(st, job, inputs, params)
        if job.tracker is not None:
            job.tracker.set_tags(
                {"sgpo.artifact_uri": ref.uri, "sgpo.processes": str(world_size())}
            )
    return ref
