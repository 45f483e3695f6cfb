"""The SGPO pipeline flow: the DAG of stages, nothing else.

    base_model -> sft -> sample -> annotate -> ppl_filter -> improver_sft -> (pairs -> dpo) x rounds -> judge
    prepare[sft|improver|po|eval] feed the stages that read data

Every stage is a cached Prefect task returning an ArtifactRef (flows.runner); a second run with
the same config reuses every finished stage, a changed stage re-runs with everything downstream,
and a failed run resumes at the stage that failed. `force` names stages to recompute.
"""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel

from artifacts.store import check_store
from flows.runner import StageFailed, StageReport, StageRunner  # noqa: F401 (re-exported)
from sgpo.config import PipelineConfig, load_config
from sgpo.llm.embedded import EmbeddedLLM
from sgpo.stage import StageContext
from tasks import get_stage

STAGES = ("sft", "sample", "annotate", "ppl_filter", "improver_sft", "pairs", "dpo", "judge")
FORCEABLE = STAGES + ("base_model", "prepare")


class PipelineReport(BaseModel):
    flow_run_id: str | None
    stages: list[StageReport]
    final_policy: str
    judge: dict[str, Any]
    mlflow_run_id: str | None = None
    report_uri: str | None = None  # the `report` stage's artifact (report.html inside; `sgpo report URI`)


def check_force(force: list[str] | None, known: tuple[str, ...]) -> list[str]:
    """`force` as given, or a ValueError naming the unknown stages (the CLI says the same)."""
    unknown = [s for s in force or [] if s.split("[")[0] not in known]
    if unknown:
        raise ValueError(f"force: unknown stage(s) {unknown}; stages: {', '.join(known)}")
    return list(force or [])


@flow(name="sgpo", description="SGPO: SFT -> self-improver -> on-policy pairs -> DPO -> judge", result_serializer="json")
def sgpo_pipeline(config: PipelineConfig | None = None, force: list[str] | None = None) -> PipelineReport:
    """Run the whole SGPO pipeline (or its variants) for `config`; `force` lists stages to recompute."""
    from sgpo.tracking import pipeline_run

    cfg = config or load_config("tiny")
    force = check_force(force, FORCEABLE)
    check_store(cfg.store.url, cfg.store.storage_options)  # scheme known, reachable, writable: before any work
    run_ctx = get_run_context()
    run_id = str(run_ctx.flow_run.id) if getattr(run_ctx, "flow_run", None) else None
    from flows.reporting import finish_pipeline, run_name

    with pipeline_run(cfg.tracking, run_name(cfg), tags={"prefect.flow_run_id": str(run_id)}) as tracking:
        ctx = StageContext(store=cfg.store, tracking=tracking, run_id=run_id, trust_remote_code=cfg.model.trust_remote_code)
        report = _pipeline(cfg, ctx, force)
        report.report_uri = finish_pipeline(cfg, ctx, report, force)  # report stage, UI summary; never raises
    report.flow_run_id, report.mlflow_run_id = run_id, tracking.parent_run_id if tracking else None
    return report


def _pipeline(cfg: PipelineConfig, ctx: StageContext, force: list[str]) -> PipelineReport:
    s = get_stage
    holder: dict[str, Any] = {}
    # The stand-in LLM (for endpoints without base_url) serves the base model, or a configured dir;
    # it starts only if annotate or judge really runs.
    llm = EmbeddedLLM(lambda: ctx.open_store().model_dir(holder["base"]) if cfg.embedded_llm.model == "base"
                      else cfg.embedded_llm.model, max_new_tokens_cap=cfg.embedded_llm.max_new_tokens_cap)
    with llm:
        run = StageRunner(ctx, force, cfg.execution, llm=llm)
        base = holder["base"] = run("base_model", s("base_model"), cfg.model)
        data = {name: run(f"prepare[{name}]", s("prepare"), getattr(cfg.data, name))
                for name in ("sft", "improver", "po", "eval")}
        pi_sft = run("sft", s("sft"), cfg.sft, base=base, data=data["sft"])
        samples = run("sample", s("sample"), cfg.sample, policy=pi_sft, data=data["improver"])
        annotations = run("annotate", s("annotate"), cfg.annotate, samples=samples)
        filtered = run("ppl_filter", s("ppl_filter"), cfg.ppl_filter, policy=pi_sft, annotations=annotations)
        pi_imp = run("improver_sft", s("improver_sft"), cfg.improver_sft, start=pi_sft, filtered=filtered)

        # SGPO: one model is policy and improver. SGPO-dagger: the policy starts from pi_sft.
        policy = pi_imp if cfg.shared_improver else pi_sft
        for r in range(1, cfg.rounds + 1):
            suffix = "" if cfg.rounds == 1 else f"[{r}]"
            pairs = run(f"pairs{suffix}", s("pairs"), cfg.pairs, policy=policy, improver=pi_imp, data=data["po"])
            policy = run(f"dpo{suffix}", s("dpo"), cfg.dpo, start=policy, pairs=pairs)

        judged = run("judge", s("judge"), cfg.judge, policy=policy, data=data["eval"])
    _publish_ui_artifacts(run.reports, judged)
    return PipelineReport(flow_run_id=None, stages=run.reports, final_policy=policy.uri, judge=judged.summary)


def _publish_ui_artifacts(reports: list[StageReport], judged: Any) -> None:
    """A stage table and the judge result in the Prefect UI's Artifacts tab."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key="sgpo-stages",
        table=[{"stage": r.stage, "status": r.status, "seconds": r.seconds, "uri": r.uri} for r in reports],
        description="Stages of this SGPO run: ran or cached, duration, artifact",
    )
    create_table_artifact(
        key="sgpo-judge",
        table=[{k: v for k, v in judged.summary.items() if not isinstance(v, (dict, list))}],
        description=f"Pairwise win rate of the final policy vs the baseline ({judged.uri})",
    )
