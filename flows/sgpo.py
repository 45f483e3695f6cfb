"""The SGPO pipeline flow: the DAG of stages, nothing else.

    base_model -> sft -> sample -> annotate -> ppl_filter -> improver_sft -> (pairs -> dpo) x rounds -> judge
    prepare[sft|improver|po|eval] feed the stages that read data

Every stage is a cached Prefect task returning an ArtifactRef; a second run with the same
config reuses every finished stage, a changed stage re-runs with everything downstream, and a
failed run resumes at the stage that failed. `force` names stages to recompute.
"""
from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel

from artifacts.refs import ArtifactRef
from flows.runner import StageFailed, StageReport, StageRunner, with_endpoint  # noqa: F401 (re-exported)
from sgpo.config import PipelineConfig, load_config
from tasks.annotate import annotate_task
from tasks.base_model import base_model_task
from tasks.common import StageContext
from tasks.dpo import dpo_task
from tasks.improver_sft import improver_sft_task
from tasks.judge import judge_task
from tasks.pairs import pairs_task
from tasks.ppl_filter import ppl_filter_task
from tasks.prepare import prepare_task
from tasks.sample import sample_task
from tasks.sft import sft_task

STAGES = ("sft", "sample", "annotate", "ppl_filter", "improver_sft", "pairs", "dpo", "judge")


class PipelineReport(BaseModel):
    flow_run_id: str | None
    stages: list[StageReport]
    final_policy: str
    judge: dict[str, Any]
    mlflow_run_id: str | None = None


@flow(name="sgpo", description="SGPO: SFT -> self-improver -> on-policy pairs -> DPO -> judge", result_serializer="json")
def sgpo_pipeline(config: PipelineConfig | None = None, force: list[str] | None = None) -> PipelineReport:
    """Run the whole SGPO pipeline (or its variants) for `config`; `force` lists stages to recompute."""
    from sgpo.tracking import pipeline_run

    cfg = config or load_config("tiny")
    run_ctx = get_run_context()
    run_id = str(run_ctx.flow_run.id) if getattr(run_ctx, "flow_run", None) else None
    with pipeline_run(cfg.tracking, cfg.name, tags={"prefect.flow_run_id": str(run_id)}) as tracking:
        ctx = StageContext(store=cfg.store, tracking=tracking, run_id=run_id, trust_remote_code=cfg.model.trust_remote_code)
        report = _pipeline(cfg, StageRunner(ctx, force or [], cfg.execution))
    report.flow_run_id, report.mlflow_run_id = run_id, tracking.parent_run_id if tracking else None
    return report


def _pipeline(cfg: PipelineConfig, run: StageRunner) -> PipelineReport:
    from sgpo.llm.embedded import EMBEDDED_MODEL_NAME, embedded_llm

    base = run("base_model", base_model_task, spec=cfg.model)
    data = {name: run(f"prepare[{name}]", prepare_task, spec=getattr(cfg.data, name), role=name)
            for name in ("sft", "improver", "po", "eval")}
    pi_sft = run("sft", sft_task, base=base, data=data["sft"], cfg=cfg.sft)
    samples = run("sample", sample_task, policy=pi_sft, data=data["improver"], cfg=cfg.sample)

    with contextlib.ExitStack() as stack:
        need_server = not (cfg.annotate.endpoint.base_url and cfg.judge.endpoint.base_url)
        base_url = None
        if need_server:
            model_dir = run.ctx.open_store().model_dir(base) if cfg.embedded_llm.model == "base" else cfg.embedded_llm.model
            base_url = stack.enter_context(embedded_llm(model_dir, max_new_tokens_cap=cfg.embedded_llm.max_new_tokens_cap))
            print(f"[sgpo] embedded external LLM at {base_url} (model {model_dir})", flush=True)
        annotations = run("annotate", annotate_task, samples=samples,
                          cfg=with_endpoint(cfg.annotate, base_url, EMBEDDED_MODEL_NAME))
        filtered = run("ppl_filter", ppl_filter_task, policy=pi_sft, annotations=annotations, cfg=cfg.ppl_filter)
        pi_imp = run("improver_sft", improver_sft_task, start=pi_sft, filtered=filtered, cfg=cfg.improver_sft)

        # SGPO: one model is policy and improver. SGPO-dagger: the policy starts from pi_sft.
        policy = pi_imp if cfg.shared_improver else pi_sft
        for r in range(1, cfg.rounds + 1):
            suffix = "" if cfg.rounds == 1 else f"[{r}]"
            pairs = run(f"pairs{suffix}", pairs_task, policy=policy, improver=pi_imp, data=data["po"], cfg=cfg.pairs)
            policy = run(f"dpo{suffix}", dpo_task, start=policy, pairs=pairs, cfg=cfg.dpo)

        judged = run("judge", judge_task, policy=policy, data=data["eval"],
                     cfg=with_endpoint(cfg.judge, base_url, EMBEDDED_MODEL_NAME))
    _publish_ui_artifacts(run.reports, judged)
    return PipelineReport(flow_run_id=None, stages=run.reports, final_policy=policy.uri, judge=judged.summary)


def _publish_ui_artifacts(reports: list[StageReport], judged: ArtifactRef) -> None:
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
