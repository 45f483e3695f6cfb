"""A stage, declared once; its cache key, Prefect task, CUDA-pool flow and CLI entry come from it.

A stage module in `tasks/` holds one plain, typed function and its declaration:

    @stage("sft", section="sft", gpu=True, description="SFT of the base model on D_sft -> pi_sft")
    def sft(job: Job, base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig) -> ArtifactRef:
        ...  # read inputs, do the work, `return job.publish_model(...)`

The signature is the declaration: parameters typed `ArtifactRef` are the input artifacts, `cfg`
is the stage's own config section (its type is the section's model), any other parameter is a
plain value that changes the output (it goes into the key). From it:

* **cache key** = stage + code version + `cache_payload(cfg)` (no runtime-only fields) + the
  prompt versions the stage reads + the inputs' content hashes (+ a source fingerprint, e.g. a
  local data file's hash). No run id: any run reuses any finished stage.
* **`Stage.run(cfg, ctx, inputs)`** looks the key up in the store, and only if it is absent
  runs the function with a `Job` (store, key, MLflow tracker, publishing that fills in the
  manifest). The function never computes a key or a manifest itself.
* **`prefect_task(stage)`**: the Prefect task (cache key, retries, JSON result on the decorator);
  `flows.stages` derives the CUDA-pool flow of a GPU stage; `python -m tasks.<stage>` and
  `sgpo stage <name>` run it alone (`stage_main`), publishing exactly as inside a flow.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from artifacts.store import ArtifactStore
from sgpo.config.pipeline import StoreConfig, cache_payload, project
from sgpo.core.tracking import StageTracker, TrackingHandle, stage_run

# Prefect task/flow defaults: results are the small JSON refs, persisted so a later run reuses them.
RESULT_OPTIONS: dict[str, Any] = dict(persist_result=True, result_serializer="json")


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


def journal_note(summary: Mapping[str, Any] | None) -> str:
    """' (48 answers from the journal, 0 sent)' for a stage that made paid calls, else ''.

    A forced LLM stage reruns but re-sends nothing its journal holds; this says so on its line
    (set the stage's `journal_namespace` to really re-ask)."""
    if (
        not summary
        or not isinstance(summary.get("from_journal"), int)
        or not isinstance(summary.get("sent"), int)
    ):
        return ""
    return f" ({summary['from_journal']} answers from the journal, {summary['sent']} sent)"


def stage_logger(stage: str) -> logging.Logger:
    """Prefect's run logger inside a run (shows in the UI), a plain logger outside one."""
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return logging.getLogger(f"sgpo.{stage}")


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"sgpo-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _no_prompts(cfg: Any) -> dict[str, str]:
    return {}


# --------------------------------------------------------------------------------------------------
# The declaration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[..., ArtifactRef]
    config: type[BaseModel]
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    optional_inputs: tuple[str, ...]  # typed `ArtifactRef | None`: left out of the key when absent
    code_version: str
    section: str  # where the config lives in its recipe, e.g. "sft", "model", "data.<role>", "pairwise.<name>"
    recipe: str  # "pipeline" (sgpo.config.pipeline.PipelineConfig) or "evaluation" (sgpo.config.evaluation.EvaluationConfig)
    description: str
    prompts: Callable[[Any], dict[str, str]]
    fingerprint: Callable[[Any], dict[str, str]] | None
    llm: (
        str | None
    )  # the cfg field holding the EndpointConfig of the LLM it calls (annotation, judging)
    gpu: bool
    tracked: bool
    retries: int
    retry_delay_s: float

    # ---------------------------------------------------------------- key
    def key_payload(
        self, cfg: BaseModel, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The config part of the key (and of the manifest): the section without runtime-only
        fields, plus the stage's plain-value parameters."""
        payload = cache_payload(cfg)
        if self.params:
            payload = {**payload, "params": {k: (params or {})[k] for k in self.params}}
        return payload

    def cache_key(
        self,
        cfg: BaseModel,
        inputs: Mapping[str, ArtifactRef],
        params: Mapping[str, Any] | None = None,
    ) -> str:
        missing = [
            n for n in self.inputs if inputs.get(n) is None and n not in self.optional_inputs
        ]
        if missing:
            raise ValueError(
                f"stage {self.name}: missing input artifact(s) {missing}; it takes {list(self.inputs)}"
            )
        hashes = {n: inputs[n].content_hash for n in self.inputs if inputs.get(n) is not None}
        if self.fingerprint is not None:
            hashes.update(self.fingerprint(cfg))
        return stage_cache_key(
            self.name,
            code_version=self.code_version,
            config=self.key_payload(cfg, params),
            inputs=hashes,
            prompts=self.prompts(cfg),
        )

    def coerce(self, cfg: Any) -> BaseModel:
        """The section as its model (a dict from JSON, e.g. a deployment's parameters, is validated)."""
        if type(cfg) is self.config:
            return cfg
        if isinstance(
            cfg, BaseModel
        ):  # e.g. the whole alpaca_eval section -> the generate stage's part
            # (a subclass too: AlpacaEvalConfig IS-A AlpacaEvalJudgeConfig but has more fields)
            return project(cfg, self.config)
        return self.config.model_validate(cfg)

    # ---------------------------------------------------------------- run
    def run(
        self,
        cfg: Any,
        ctx: StageContext,
        inputs: Mapping[str, ArtifactRef],
        params: Mapping[str, Any] | None = None,
    ) -> ArtifactRef:
        """The finished artifact for these inputs and config: from the store, or made now."""
        cfg = self.coerce(cfg)
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(
                f"stage {self.name}: unknown parameter(s) {unknown}; it takes {list(self.params)}"
            )
        key = self.cache_key(cfg, inputs, params)
        store = ctx.open_store()
        if (ref := ctx.reuse(store, self.name, key)) is not None:
            return ref
        if self.llm:
            endpoint = getattr(cfg, self.llm)
            if not endpoint.base_url:
                from sgpo.llm.client import ExternalLLMNotConfigured

                raise ExternalLLMNotConfigured(
                    f"{self.section}.{self.llm}.base_url is not set: configure the LLM this stage calls (base_url, "
                    "model, api_key_env), or run it inside a flow, which starts the embedded local server"
                )
        # One run computes a (stage, key) at a time: a second one waits and reuses its artifact
        # (or fails at once with store.on_busy=fail), so paid calls are never made twice (artifacts.lease).
        from artifacts.lease import Lease, acquire_or_wait

        lease = Lease(store, self.name, key, timeout_s=ctx.store.lease_timeout_s, run_id=ctx.run_id)
        made, waited = acquire_or_wait(
            lease,
            on_busy=ctx.store.on_busy,
            poll_s=ctx.store.lease_poll_s,
            finished=lambda: store.find(self.name, key),
            logger=stage_logger(self.name),
        )
        if made is not None:
            return made  # made by the run we waited for (forced or not: it is fresh)
        try:
            if (waited or not ctx.refresh) and (ref := store.find(self.name, key)) is not None:
                return ref  # finished by another run between our lookup and the lease
            launch = getattr(
                cfg, "launch", None
            )  # training stages: more than one process -> accelerate launch
            if launch is not None:
                from sgpo.core.launch import launch_plan, launch_stage

                if (plan := launch_plan(launch, where=f"{self.section}.launch")) is not None:
                    return launch_stage(
                        self, plan, cfg, ctx, inputs, params, key, log=stage_logger(self.name)
                    )
            job = Job(
                stage=self,
                key=key,
                ctx=ctx,
                store=store,
                cfg=cfg,
                inputs={n: r for n, r in inputs.items() if r is not None},
                params=params,
            )
            with job.tracking():
                ref = self.fn(job, **{n: inputs.get(n) for n in self.inputs}, cfg=cfg, **params)
                if job.tracker is not None:
                    job.tracker.set_tags({"sgpo.artifact_uri": ref.uri})
            return ref
        finally:
            lease.release()

    def run_rank(
        self,
        cfg: Any,
        ctx: StageContext,
        inputs: Mapping[str, ArtifactRef],
        params: Mapping[str, Any],
        key: str,
    ) -> ArtifactRef | None:
        """One rank of a launched stage (sgpo.core.launch): the function, with the parent's key; rank 0 tracks
        and publishes, the other ranks train alongside and publish nothing (they return None). No store
        lookup here: the parent did it, and every rank must take the same path."""
        from sgpo.core.launch import process_rank

        cfg = self.coerce(cfg)
        if (mine := self.cache_key(cfg, inputs, params)) != key:
            raise RuntimeError(
                f"stage {self.name}: the launched rank computes cache key {mine[:16]}, the parent "
                f"{key[:16]}: the config did not survive the trip (sgpo versions differ?)"
            )
        main = process_rank() == 0
        job = Job(
            stage=self,
            key=key,
            ctx=ctx,
            store=ctx.open_store(),
            cfg=cfg,
            inputs=dict(inputs),
            params=dict(params),
            is_main_process=main,
        )
        if not main:
            self.fn(job, **{n: inputs.get(n) for n in self.inputs}, cfg=cfg, **params)
            return None
        with job.tracking():
            ref = self.fn(job, **{n: inputs.get(n) for n in self.inputs}, cfg=cfg, **params)
            if job.tracker is not None:
                job.tracker.set_tags(
                    {
                        "sgpo.artifact_uri": ref.uri,
                        "sgpo.processes": os.environ.get("WORLD_SIZE", "1"),
                    }
                )
        return ref


def stage(
    name: str,
    *,
    section: str,
    description: str,
    code_version: str = "1",
    recipe: str = "pipeline",
    prompts: Callable[[Any], dict[str, str]] = _no_prompts,
    fingerprint: Callable[[Any], dict[str, str]] | None = None,
    llm: str | None = None,
    gpu: bool = False,
    tracked: bool = True,
    retries: int = 0,
    retry_delay_s: float = 30.0,
) -> Callable[[Callable[..., ArtifactRef]], Stage]:
    """Declare a stage from its function's signature (see the module docstring)."""

    def declare(fn: Callable[..., ArtifactRef]) -> Stage:
        hints = typing.get_type_hints(fn)
        names = list(inspect.signature(fn).parameters)
        if names[:1] != ["job"] or "cfg" not in names:
            raise TypeError(
                f"stage {name}: the function must take (job, <inputs...>, cfg, <params...>)"
            )
        optional = tuple(n for n in names if hints.get(n) == (ArtifactRef | None))
        inputs = tuple(n for n in names if hints.get(n) is ArtifactRef or n in optional)
        params = tuple(n for n in names[1:] if n != "cfg" and n not in inputs)
        return Stage(
            name=name,
            fn=fn,
            config=hints["cfg"],
            inputs=inputs,
            params=params,
            optional_inputs=optional,
            code_version=code_version,
            section=section,
            recipe=recipe,
            description=description,
            prompts=prompts,
            fingerprint=fingerprint,
            llm=llm,
            gpu=gpu,
            tracked=tracked,
            retries=retries,
            retry_delay_s=retry_delay_s,
        )

    return declare


# --------------------------------------------------------------------------------------------------
# What the function gets
# --------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One execution of a stage: where to read and publish, the key, the tracker."""

    stage: Stage
    key: str
    ctx: StageContext
    store: ArtifactStore
    cfg: Any
    inputs: dict[str, ArtifactRef]
    params: dict[str, Any]
    tracker: StageTracker | None = None
    is_main_process: bool = (
        True  # False on ranks > 0 of a launched stage: they neither track nor publish
    )
    _t0: float = field(default_factory=time.perf_counter)

    @property
    def log(self) -> logging.Logger:
        return stage_logger(self.stage.name)

    @property
    def work_url(self) -> str:
        """Scratch space of this key (e.g. the paid-call journal); kept after publishing, for audit."""
        return self.store.work_url(self.stage.name, self.key)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        if not self.stage.tracked:
            yield
            return
        with stage_run(
            self.ctx.tracking, self.stage.name, tags={"sgpo.cached": "false"}
        ) as tracker:
            tracker.log_params(self.stage.key_payload(self.cfg, self.params))
            self.tracker = tracker
            yield

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric entries only (bools and None are left out) to the stage's MLflow run."""
        if self.tracker is not None:
            nums = {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self.tracker.log_metrics(
                nums, step=step
            ) if step is not None else self.tracker.log_metrics(nums)

    def model_dir(self, ref: ArtifactRef) -> str:
        return self.store.model_dir(ref)

    def read_rows(self, ref: ArtifactRef) -> list[dict[str, Any]]:
        return self.store.read_table(ref).to_pylist()

    def manifest(
        self, *, seeds: dict[str, int] | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The lineage written beside the artifact: enough to trace and reproduce it."""
        return {
            "stage": self.stage.name,
            "code_version": self.stage.code_version,
            "config": self.stage.key_payload(self.cfg, self.params),
            "prompts": self.stage.prompts(self.cfg),
            "seeds": seeds or {},
            "parents": {
                k: {"uri": v.uri, "content_hash": v.content_hash, "stage": v.stage}
                for k, v in self.inputs.items()
            },
            "seconds": round(time.perf_counter() - self._t0, 3),
            # per-step training logs (loss, reward margin/accuracy, lr), for the report's curves
            **(
                {"train_history": self.tracker.history}
                if self.tracker is not None and self.tracker.history
                else {}
            ),
            **(extra or {}),
        }

    def publish_table(
        self,
        table: Any,
        *,
        summary: dict[str, Any] | None = None,
        seeds: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        if not self.is_main_process:
            return None  # type: ignore[return-value]  # rank 0 publishes
        return self.store.publish_table(
            self.stage.name,
            self.key,
            table,
            manifest=self.manifest(seeds=seeds, extra=extra),
            summary=summary,
            produced_by=self.ctx.run_id,
        )

    def publish_model(
        self,
        local_dir: str | Path,
        *,
        summary: dict[str, Any] | None = None,
        seeds: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        if not self.is_main_process:
            return None  # type: ignore[return-value]  # rank 0 publishes
        return self.store.publish_model(
            self.stage.name,
            self.key,
            local_dir,
            manifest=self.manifest(seeds=seeds, extra=extra),
            summary=summary,
            produced_by=self.ctx.run_id,
        )

    def publish_bytes(self, name: str, data: bytes) -> str:
        """A side file beside the artifact (e.g. a Parquet snapshot); publish it before the data."""
        uri = f"{self.store.artifact_url(self.stage.name, self.key)}/{name}"
        self.store._write_bytes(self.store._path(uri), data)
        return uri

    def publish_json(self, name: str, obj: Any) -> str:
        """A side file (e.g. a report) beside the artifact; publish it before the data (manifest last)."""
        if not self.is_main_process:
            return ""
        return self.store.publish_json(self.stage.name, self.key, name, obj)


# --------------------------------------------------------------------------------------------------
# Prefect: the task, and where its cache records live
# --------------------------------------------------------------------------------------------------
def result_storage(store: StoreConfig) -> Any:
    """Where Prefect keeps its cache records: beside the artifacts, so any process finds them."""
    from artifacts.store import normalize_url

    url = normalize_url(store.url)
    if url.startswith("file://"):
        path = Path(url[len("file://") :]) / "_prefect"
        path.mkdir(parents=True, exist_ok=True)
        return path
    from prefect.filesystems import RemoteFileSystem

    from artifacts.hashing import sha256_text

    slug = f"sgpo-results-{sha256_text(url)[:10]}"
    # Only the endpoint and other non-secret options: credentials come from the environment.
    RemoteFileSystem(basepath=f"{url}/_prefect", settings=store.storage_options).save(
        slug, overwrite=True
    )
    return f"remote-file-system/{slug}"


_TASKS: dict[str, Any] = {}
TRANSIENT_ERRORS = (TimeoutError, ConnectionError)


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
    """The stage as a Prefect task: same key as `Stage.run`, JSON results, retries on the decorator."""
    if st.name in _TASKS:
        return _TASKS[st.name]
    from prefect import task

    def run_stage(
        inputs: dict[str, ArtifactRef],
        cfg: Any,
        ctx: StageContext,
        params: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        return st.run(cfg, ctx, inputs, params)

    run_stage.__name__ = run_stage.__qualname__ = f"{st.name}_task"
    run_stage.__doc__ = st.description
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
    )(run_stage)
    return _TASKS[st.name]


def run_task(
    st: Stage,
    cfg: Any,
    ctx: StageContext,
    inputs: Mapping[str, ArtifactRef],
    params: Mapping[str, Any] | None = None,
    *,
    label: str | None = None,
) -> tuple[ArtifactRef, bool]:
    """Run the stage's task here (in a flow, or a stage's own flow on a worker); returns (artifact, cached).

    Cached = Prefect's own cache record hit, or the store already held the artifact (made by
    another run: its `produced_by` is not this run)."""
    state = prefect_task(st).with_options(
        result_storage=result_storage(ctx.store),
        refresh_cache=ctx.refresh or None,
        task_run_name=label or st.name,
    )(
        inputs=dict(inputs),
        cfg=cfg,
        ctx=ctx,
        params=dict(params) if params else None,
        return_state=True,
    )
    ref: ArtifactRef = state.result()  # raises the stage's error
    if ref.kind in ("table", "model") and not (store := ctx.open_store()).holds(ref):
        # Prefect's cache record names the artifact where the store was when it was made (a copied or
        # moved store): the same key, looked up where the store is now (or recomputed if absent there).
        if (here := store.find(ref.stage, ref.cache_key)) is not None:
            return here, True
        state = prefect_task(st).with_options(
            result_storage=result_storage(ctx.store),
            refresh_cache=True,
            task_run_name=label or st.name,
        )(
            inputs=dict(inputs),
            cfg=cfg,
            ctx=ctx,
            params=dict(params) if params else None,
            return_state=True,
        )
        ref = state.result()
    return ref, state.name == "Cached" or ref.produced_by != ctx.run_id


# --------------------------------------------------------------------------------------------------
# The CLI entry: `python -m tasks.<stage>` / `sgpo stage <name>`
# --------------------------------------------------------------------------------------------------
def section_of(recipe: Any, path: str) -> Any:
    """`sft`, `data.po`, `pairwise.imp_vs_b` (a list item by its `name`) -> the section object."""
    node = recipe
    for part in path.split("."):
        if isinstance(node, list):
            match = [x for x in node if getattr(x, "name", None) == part]
            if not match:
                raise KeyError(
                    f"no item named {part!r} in {path}; names: {[getattr(x, 'name', None) for x in node]}"
                )
            node = match[0]
        elif hasattr(node, part):
            node = getattr(node, part)
        else:
            raise KeyError(f"{path}: {type(node).__name__} has no section {part!r}")
    return node


def _load_recipe(st: Stage, source: str | None, overrides: list[str]) -> Any:
    if st.recipe == "evaluation":
        from sgpo.config.evaluation import load_evaluation_config

        return load_evaluation_config(source, overrides)
    from sgpo.config.pipeline import load_config

    return load_config(source, overrides)


def stage_parser(st: Stage) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m tasks.{st.name}",
        description=f"Run the `{st.name}` stage alone: {st.description}. It publishes to the store exactly as "
        "inside a flow (same cache key, same artifact) and prints the artifact reference as JSON on the last line.",
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value]",
        help=f"{st.recipe} preset or YAML file, then overrides (e.g. {st.section.split('.')[0]}.KEY=VALUE)",
    )
    for name in st.inputs:
        p.add_argument(
            f"--{name}",
            required=name not in st.optional_inputs,
            metavar="URI",
            help=f"input artifact `{name}` (its folder in the store)"
            + (" (optional)" if name in st.optional_inputs else ""),
        )
    for name in st.params:
        p.add_argument(f"--{name}", required=True, help=f"value of the stage parameter `{name}`")
    default_section = st.section if "<" not in st.section else None
    p.add_argument(
        "--section",
        default=default_section,
        required=default_section is None,
        help=f"config section to use (default: {st.section})",
    )
    p.add_argument(
        "--force", action="store_true", help="recompute even if the store holds the artifact"
    )
    p.add_argument(
        "--run-id", default="cli", help="recorded as produced_by in the artifact (default: cli)"
    )
    p.add_argument(
        "--launch-spec", default=None, help=argparse.SUPPRESS
    )  # a rank under accelerate launch (sgpo.core.launch)
    return p


def _launched_rank_main(st: Stage, args: argparse.Namespace) -> int:
    """A rank under `accelerate launch` (sgpo.core.launch): config, context and key from the parent's spec."""
    from artifacts.store import read_ref
    from sgpo.core.launch import process_rank, write_rank_error

    try:
        spec = json.loads(Path(args.launch_spec).read_text())
        ctx = StageContext.model_validate(spec["ctx"])
        inputs = {n: read_ref(getattr(args, n), ctx.store.storage_options) for n in st.inputs}
        ref = st.run_rank(spec["cfg"], ctx, inputs, spec.get("params") or {}, spec["key"])
    except BaseException as e:
        write_rank_error(e)
        print(
            f"sgpo: stage '{st.name}' rank {process_rank()} failed: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return 1
    if ref is not None:
        print(json.dumps(ref.model_dump(mode="json")))
    return 0


def _external_rank_main(
    st: Stage,
    cfg: Any,
    recipe: Any,
    inputs: dict,
    params: dict,
    args: argparse.Namespace,
    trust: bool,
) -> int:
    """`accelerate launch ... -m tasks.<stage> CONFIG ...` on several nodes: rank 0 looks the key up and
    every rank follows its decision; then as under sgpo's own launch (rank 0 tracks and publishes)."""
    from sgpo.core.launch import process_rank
    from sgpo.core.tracking import pipeline_run
    from sgpo.train.trainers import main_process_value

    key = st.cache_key(cfg, inputs, params)
    store = ArtifactStore(recipe.store.url, recipe.store.storage_options)
    found = store.find(st.name, key) if process_rank() == 0 and not args.force else None
    if main_process_value(found.uri if found is not None else None) is not None:
        if found is not None:
            print(json.dumps(found.model_dump(mode="json")))
        return 0
    with contextlib.ExitStack() as stack:
        tracking = (
            stack.enter_context(
                pipeline_run(
                    recipe.tracking, f"{recipe.name}:{st.name}", tags={"sgpo.kind": "stage"}
                )
            )
            if process_rank() == 0
            else None
        )
        ctx = StageContext(
            store=recipe.store,
            tracking=tracking,
            run_id=args.run_id,
            trust_remote_code=trust,
            refresh=args.force,
        )
        ref = st.run_rank(cfg, ctx, inputs, params, key)
    if ref is not None:
        print(json.dumps(ref.model_dump(mode="json")))
    return 0


def stage_main(st: Stage, argv: list[str] | None = None) -> int:
    from artifacts.store import read_ref
    from sgpo.config.pipeline import ConfigError
    from sgpo.core.tracking import pipeline_run

    args = stage_parser(st).parse_intermixed_args(argv)
    if args.launch_spec:
        return _launched_rank_main(st, args)
    source, overrides = (
        (args.items[0], args.items[1:])
        if args.items and "=" not in args.items[0]
        else (None, args.items)
    )
    try:
        recipe = _load_recipe(st, source, overrides)
        cfg = st.coerce(section_of(recipe, args.section))
    except (ConfigError, KeyError) as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    try:
        inputs = {
            n: read_ref(getattr(args, n), recipe.store.storage_options)
            for n in st.inputs
            if getattr(args, n) is not None
        }
    except (FileNotFoundError, ValueError) as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    params = {n: getattr(args, n) for n in st.params}
    trust = getattr(getattr(recipe, "model", None), "trust_remote_code", False)
    store = ArtifactStore(recipe.store.url, recipe.store.storage_options)
    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
    ):  # a rank of a launch started outside sgpo (e.g. multi-node)
        return _external_rank_main(st, cfg, recipe, inputs, params, args, trust)
    try:  # the key's fingerprint checks the stage's source (a data file, a model): its one line
        cached = (
            not args.force and store.find(st.name, st.cache_key(cfg, inputs, params)) is not None
        )
    except ValueError as e:
        print(f"sgpo: stage '{st.name}': {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        with pipeline_run(
            recipe.tracking, f"{recipe.name}:{st.name}", tags={"sgpo.kind": "stage"}
        ) as tracking:
            ctx = StageContext(
                store=recipe.store,
                tracking=tracking,
                run_id=args.run_id,
                trust_remote_code=trust,
                refresh=args.force,
            )
            ref = st.run(cfg, ctx, inputs, params)
    except Exception as e:
        print(f"sgpo: stage '{st.name}' failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    status = "cached" if cached else "ran" + journal_note(ref.summary)
    print(f"[sgpo] {st.name} {status} {time.perf_counter() - t0:.1f}s  {ref.uri}", file=sys.stderr)
    print(json.dumps(ref.model_dump(mode="json")))
    return 0
