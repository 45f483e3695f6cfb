"""The evaluation flow: AlpacaEval 2.0, Arena-Hard v0.1, MT-Bench, lm-eval tasks and pairwise win rates of one model.

    model (tiny | local dir | artifact URI | hub id)
      -> alpaca_eval_generate -> alpaca_eval_judge    (WR, discrete WR, LC WR, SEs)
      -> arena_hard_generate  -> arena_hard_judge     (BT score, 95% bootstrap CI)
      -> mt_bench_generate    -> mt_bench_judge       (turn 1, turn 2, overall, per category)
      -> lm_eval                                      (Open LLM Leaderboard tasks, IFEval: lm-eval's scorers)
    table artifacts -> pairwise[NAME]                 (win rate + SE of one column over another)

The DAG only, as `flows.pipeline`: every stage is a cached Prefect task returning an ArtifactRef,
keyed by content hashes + its config + prompt versions (never the run id); a second run reuses
every finished stage, a changed judge setting re-judges without regenerating, `force` names
stages to recompute (their paid judge calls still come from the journal). Judge endpoints without
`base_url` talk to the embedded local OpenAI-compatible server (over the evaluated model unless
`embedded_llm.model` says otherwise), started only if a judge stage really runs. Results go to a
Prefect table artifact, the MLflow run (one parent run, a nested run per stage) and the returned
`EvaluationReport` (sgpo.report.summary). With `execution.mode: distributed` the stages that run the
model (the generate stages, lm_eval) are dispatched to the CUDA pool like the pipeline's GPU
stages (flows.dispatch); the judges run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import get_run_context

from artifacts.refs import ArtifactRef
from artifacts.store import check_store
from flows.pipeline import check_force
from flows.reporting import flow_run_namer
from flows.runner import StageRunner
from sgpo.config import EvalModelSpec, EvaluationConfig, load_evaluation_config
from sgpo.core import StageContext
from sgpo.core.threads import configure_threads
from sgpo.generate import shared_generators
from sgpo.llm.embedded import EmbeddedLLM
from sgpo.report.summary import EvaluationReport, parent_metrics, result_rows
from tasks import EVALUATION_STAGES, get_stage

__all__ = [
    "EVALUATION_STAGES",
    "EvaluationReport",
    "evaluate",
    "load_evaluation_config",
    "resolve_model",
]


def resolve_model(
    spec: EvalModelSpec, run: StageRunner | None = None, storage_options: dict | None = None
) -> tuple[ArtifactRef, str]:
    """(ArtifactRef, display name) of the model to evaluate.

    'tiny', a GGUF file and `packaged:NAME` run the `base_model` stage (needs `run`: it builds or
    converts the model once, into the store); an artifact URI is read from its manifest; a local
    dir is referenced by content hash; anything else is a hub id (name + revision)."""
    from artifacts.store import hub_model_ref, local_model_ref, read_ref
    from sgpo.models.source import PACKAGED_PREFIX

    made_by_base_model = spec.path == "tiny" or spec.path.startswith(PACKAGED_PREFIX)
    if made_by_base_model or spec.path.lower().endswith(".gguf"):
        from sgpo.config import ModelSpec
        from sgpo.models.source import resolve_model_source

        source = resolve_model_source(spec.path, spec.revision)  # a bad source: its error, first
        if run is None:
            raise ValueError(
                f"model.path={spec.path} is made by the base_model stage: pass the stage runner"
            )
        if source.packaged is not None:
            name = source.packaged.name
        elif source.kind == "gguf":
            name = Path(spec.path).stem
        else:
            name = "sgpo-tiny"
        ref = run("base_model", get_stage("base_model"), ModelSpec(name_or_path=spec.path))
        return ref, spec.name or name
    if "://" in spec.path and not spec.path.startswith("hf://"):
        ref = read_ref(spec.path, storage_options)
        if ref.kind not in ("model", "hub_model"):
            raise ValueError(f"model.path {spec.path!r} is a {ref.kind} artifact, not a model")
        return ref, spec.name or f"{ref.stage}-{ref.short}"
    local = Path(spec.path).expanduser()
    if local.is_dir():
        return local_model_ref(local), spec.name or local.resolve().name
    hub_id = spec.path.removeprefix("hf://")
    return hub_model_ref(hub_id, spec.revision), spec.name or hub_id.rstrip("/").split("/")[-1]


@flow(
    name="sgpo-evaluate",
    description="AlpacaEval 2.0, Arena-Hard v0.1 and pairwise win rates of one model",
    result_serializer="json",
    flow_run_name=flow_run_namer(lambda: load_evaluation_config()),
)
def evaluate(
    config: EvaluationConfig | None = None, force: list[str] | None = None
) -> EvaluationReport:
    """Evaluate `config.model` on the configured benchmarks; `force` lists stages (or `pairwise[NAME]`) to recompute.

    Args:
        config: The model to evaluate, the benchmarks and their judges, store and tracking (default: the default evaluation config)
        force: Stages to recompute even when cached, e.g. ["alpaca_eval_judge"] or ["pairwise[NAME]"]; an unknown name fails the run at once
    """
    from sgpo.core.tracking import pipeline_run

    cfg = config or load_evaluation_config()
    configure_threads(cfg.threads)  # a run from the UI or a deployment did not pass through the CLI
    force = check_force(force, EVALUATION_STAGES)
    check_store(
        cfg.store.url, cfg.store.storage_options
    )  # scheme known, reachable, writable: before any work
    run_ctx = get_run_context()
    run_id = str(run_ctx.flow_run.id) if getattr(run_ctx, "flow_run", None) else None
    tags = {"prefect.flow_run_id": str(run_id), "sgpo.kind": "evaluation"}
    from flows.reporting import finish_evaluation, run_name

    with pipeline_run(cfg.tracking, run_name(cfg), tags=tags) as tracking:
        ctx = StageContext(
            store=cfg.store,
            tracking=tracking,
            run_id=run_id,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        report = _evaluate(cfg, ctx, force)
        report.report_uri = finish_evaluation(
            cfg, ctx, report, force
        )  # report stage, UI summary; never raises
        if tracking:
            from mlflow.tracking import MlflowClient

            from sgpo.core.tracking import StageTracker

            StageTracker(
                MlflowClient(tracking_uri=tracking.uri), tracking.parent_run_id
            ).log_metrics(parent_metrics(report))
    report.flow_run_id, report.mlflow_run_id = run_id, tracking.parent_run_id if tracking else None
    return report


def _evaluate(cfg: EvaluationConfig, ctx: StageContext, force: list[str]) -> EvaluationReport:
    from artifacts.store import read_ref
    from flows.dispatch import check_not_on_the_cuda_pool

    check_not_on_the_cuda_pool(cfg.execution)

    s = get_stage
    holder: dict[str, Any] = {}
    # The stand-in judge (for endpoints without base_url) serves the evaluated model, or a configured
    # dir; it starts only if a judge stage really runs.
    llm = EmbeddedLLM.from_config(
        cfg.embedded_llm, lambda: ctx.open_store().model_dir(holder["model"])
    )
    tables = {
        p.name: read_ref(p.table, cfg.store.storage_options) for p in cfg.pairwise
    }  # fail fast
    # One loaded model for every benchmark's generation (and lm-eval's HF back-end) in this process,
    # closed when the flow ends; with execution.mode=distributed the GPU stages (generate, lm_eval)
    # are dispatched to the CUDA pool and each loads its own there, as does a stage run alone.
    with llm, shared_generators():
        run = StageRunner(ctx, force, cfg.execution, llm=llm, width=24)
        model, model_name = resolve_model(cfg.model, run, cfg.store.storage_options)
        holder["model"] = model
        out = EvaluationReport(model=model.uri, model_name=model_name, stages=[])
        # each benchmark: `<bench>_generate` (the model answers) -> `<bench>_judge`, on the benchmark's section
        for bench, uri_key in (
            ("alpaca_eval", "annotations_uri"),
            ("arena_hard", "judgments_uri"),
            ("mt_bench", "judgments_uri"),
        ):
            section = getattr(cfg, bench)
            if section.enabled:
                answers = run(
                    f"{bench}_generate",
                    s(f"{bench}_generate"),
                    section,
                    params={"model_name": model_name},
                    model=model,
                )
                judged = run(f"{bench}_judge", s(f"{bench}_judge"), section, answers=answers)
                setattr(out, bench, {**judged.summary, uri_key: judged.uri})
        if cfg.lm_eval.enabled:
            scored = run(
                "lm_eval", s("lm_eval"), cfg.lm_eval, params={"model_name": model_name}, model=model
            )
            out.lm_eval = {**scored.summary, "metrics_uri": scored.uri}
        for p in cfg.pairwise:
            judged = run(f"pairwise[{p.name}]", s("pairwise"), p, table=tables[p.name])
            out.pairwise[p.name] = {**judged.summary, "annotations_uri": judged.uri}
    out.stages = list(run.reports)
    _publish_ui_artifacts(out)
    return out


def _publish_ui_artifacts(report: EvaluationReport) -> None:
    """The stages and the headline results in the Prefect UI's Artifacts tab."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key="sgpo-eval-stages",
        table=[
            {"stage": r.stage, "status": r.status, "seconds": r.seconds, "uri": r.uri}
            for r in report.stages
        ],
        description=f"Stages of this evaluation of {report.model_name}: ran or cached, duration, artifact",
    )
    create_table_artifact(
        key="sgpo-eval-results",
        table=[
            {k: ("" if v is None else v) for k, v in row.items()} for row in result_rows(report)
        ],
        description=f"{report.model_name}: AlpacaEval 2.0 WR/LC (SE), Arena-Hard score (95% CI), pairwise win rates",
    )
