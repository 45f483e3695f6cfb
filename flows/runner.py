"""Running one stage inside a flow: where (dispatch), cached or not, how long, and what it made.

Shared by every flow (pipeline, evaluate): each stage call goes through `StageRunner`, which
points an LLM stage without a configured endpoint at the embedded stand-in server (started only
if that stage really runs), runs the stage's task in-process or on the CUDA pool
(flows.dispatch), turns its error into a `StageFailed` that names the stage, prints and logs one
line per stage, and records cached stages in MLflow.
"""

from __future__ import annotations

import time
from typing import Any

from artifacts.refs import ArtifactRef
from flows.dispatch import dispatch_stage
from sgpo.config import ExecutionConfig
from sgpo.core import Stage, StageContext, stage_logger
from sgpo.core.job import journal_note
from sgpo.llm.embedded import EmbeddedLLM, embedded_model_name
from sgpo.report.summary import StageReport


class StageFailed(RuntimeError):
    """A stage's error, with the stage named; finished stages stay cached for the next run."""


def with_endpoint(section: Any, field: str, base_url: str | None, model: str) -> Any:
    """`section` with its `field` endpoint pointed at `base_url` / `model`."""
    ep = getattr(section, field)
    return section.model_copy(
        update={field: ep.model_copy(update={"base_url": base_url, "model": model})}
    )


def show_cached(label: str, ref: ArtifactRef) -> None:
    """A cached stage runs no task and no subflow, so the UI's graph never shows it: a link
    artifact on the flow run names it, with its artifact URI. Never fails the stage."""
    try:
        from prefect.artifacts import create_link_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:  # `python -m tasks.NAME`, tests: nothing to attach to
            return
        create_link_artifact(
            link=ref.uri,
            link_text=f"{label} (cached) {ref.uri}",
            description=f"Stage {label}: cached, reused from an earlier run "
            f"(content {ref.content_hash[:12]}, made by {ref.produced_by or 'unknown'})",
        )
    except Exception as e:  # noqa: BLE001 - the API is down: the stage line in the logs still says it
        stage_logger("flow").debug("no cached-stage artifact for %s: %s", label, e)


class StageRunner:
    """Call as `run(label, stage, cfg, **inputs)`; `label` is the stage name, optionally `name[suffix]`."""

    def __init__(
        self,
        ctx: StageContext,
        force: list[str],
        execution: ExecutionConfig | None = None,
        *,
        llm: EmbeddedLLM | None = None,
        width: int = 18,
    ):
        self.ctx, self.force = ctx, set(force)
        self.execution = execution or ExecutionConfig()
        self.llm = llm
        self.reports: list[StageReport] = []
        self.width = width
        self.log = stage_logger("flow")  # the flow run's logger inside a flow, a plain one outside

    def _forced(self, label: str) -> bool:
        return label.split("[")[0] in self.force or label in self.force

    def _point_at_embedded(
        self, st: Stage, cfg: Any, inputs: dict[str, ArtifactRef], params: dict | None, forced: bool
    ) -> Any:
        """An LLM stage without base_url talks to the embedded server, which starts only if the stage
        has no finished artifact (the model name, part of the key, is set either way)."""
        if not st.llm or self.llm is None or getattr(cfg, st.llm).base_url:
            return cfg
        cfg = st.coerce(cfg)
        name = embedded_model_name(cfg, judge=self.llm.judge, annotator=self.llm.annotator)
        cfg = with_endpoint(cfg, st.llm, None, name)
        if (
            not forced
            and self.ctx.open_store().find(st.name, st.cache_key(cfg, inputs, params)) is not None
        ):
            return (
                cfg  # cached: no server needed; run_stage returns the artifact before its preflight
            )
        return with_endpoint(cfg, st.llm, self.llm.base_url(), name)

    def __call__(
        self,
        label: str,
        st: Stage,
        cfg: Any,
        params: dict[str, Any] | None = None,
        **inputs: ArtifactRef,
    ) -> ArtifactRef:
        forced = self._forced(label)
        ctx = self.ctx.model_copy(update={"refresh": forced})
        t0 = time.perf_counter()
        try:
            cfg = self._point_at_embedded(st, cfg, inputs, params, forced)
            ref, cached = dispatch_stage(label, st, cfg, inputs, params, ctx, self.execution)
        except Exception as e:
            raise StageFailed(f"stage '{label}' failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        report = StageReport(
            stage=label,
            status="cached" if cached else "ran",
            seconds=round(seconds, 2),
            uri=ref.uri,
            content_hash=ref.content_hash,
            summary=ref.summary,
        )
        self.reports.append(report)
        note = (
            "" if cached else journal_note(ref.summary)
        )  # e.g. " (48 answers from the journal, 0 sent)"
        line = f"[sgpo] {label:<{self.width}} {report.status:<6} {seconds:7.1f}s  {ref.uri}{note}"
        print(line, flush=True)
        self.log.info(line)
        if cached:
            show_cached(label, ref)
        if cached and self.ctx.tracking:
            from sgpo.core.tracking import stage_run

            with stage_run(
                self.ctx.tracking, label, tags={"sgpo.cached": "true", "sgpo.artifact_uri": ref.uri}
            ):
                pass
        return ref
