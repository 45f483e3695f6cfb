"""The GPU stages as Prefect flows: what the `cuda` work pool runs when the pipeline is distributed.

    sgpo pipeline (cpu pool) --run_deployment--> sft/sgpo-stage-sft (cuda pool) -> run_sft(...)

One flow per GPU stage (sft, sample, ppl_filter, improver_sft, pairs, dpo). Each flow runs the
stage's own Prefect task, i.e. the same `run_<stage>` function the in-process pipeline runs,
with the same cache key and the same result storage (beside the artifacts in the shared store),
so local and distributed runs share finished stages. The flows' own results are persisted as
JSON (a small ArtifactRef); the parent reads the artifact back from the shared store by cache
key (`flows.dispatch`), which works whatever result storage the worker has.

Flow names are the stage names and deployments are `<stage>/<prefix>-<stage>` (ExecutionConfig);
`deployments/prefect.yaml` registers one deployment per flow here.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from artifacts.refs import ArtifactRef
from sgpo.config import (
    DPOStageConfig,
    ImproverSFTStageConfig,
    PairsStageConfig,
    PplFilterStageConfig,
    SampleStageConfig,
    SFTStageConfig,
)
from tasks.common import StageContext
from tasks.dpo import dpo_task
from tasks.improver_sft import improver_sft_task
from tasks.pairs import pairs_task
from tasks.ppl_filter import ppl_filter_task
from tasks.sample import sample_task
from tasks.sft import sft_task

GPU_STAGES = ("sft", "sample", "ppl_filter", "improver_sft", "pairs", "dpo")

# The child's return value is a small ArtifactRef: JSON, persisted (never pickled).
STAGE_FLOW_OPTIONS: dict[str, Any] = dict(persist_result=True, result_serializer="json")


def _run_stage_task(task: Any, ctx: StageContext, **params: Any) -> ArtifactRef:
    """The stage's task, with result storage in the shared store and `force` honoured (as in-process)."""
    from flows.runner import result_storage

    storage = result_storage(ctx.store)
    state = task.with_options(result_storage=storage, refresh_cache=ctx.refresh or None)(
        **params, ctx=ctx, return_state=True
    )
    return state.result()  # raises the stage's error, which fails this flow run


@flow(name="sft", description="GPU stage: supervised fine-tuning of the base model -> pi_sft", **STAGE_FLOW_OPTIONS)
def sft_stage_flow(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, ctx: StageContext) -> ArtifactRef:
    return _run_stage_task(sft_task, ctx, base=base, data=data, cfg=cfg)


@flow(name="sample", description="GPU stage: sample y ~ pi_sft(x) on D_imp (vLLM on GPU)", **STAGE_FLOW_OPTIONS)
def sample_stage_flow(policy: ArtifactRef, data: ArtifactRef, cfg: SampleStageConfig, ctx: StageContext) -> ArtifactRef:
    return _run_stage_task(sample_task, ctx, policy=policy, data=data, cfg=cfg)


@flow(name="ppl_filter", description="GPU stage: perplexity IQR filter of y_imp / y_ext under pi_sft", **STAGE_FLOW_OPTIONS)
def ppl_filter_stage_flow(
    policy: ArtifactRef, annotations: ArtifactRef, cfg: PplFilterStageConfig, ctx: StageContext
) -> ArtifactRef:
    return _run_stage_task(ppl_filter_task, ctx, policy=policy, annotations=annotations, cfg=cfg)


@flow(name="improver_sft", description="GPU stage: train the self-improver on the filtered responses", **STAGE_FLOW_OPTIONS)
def improver_sft_stage_flow(
    start: ArtifactRef, filtered: ArtifactRef, cfg: ImproverSFTStageConfig, ctx: StageContext
) -> ArtifactRef:
    return _run_stage_task(improver_sft_task, ctx, start=start, filtered=filtered, cfg=cfg)


@flow(name="pairs", description="GPU stage: on-policy pairs (policy answer vs improver refinement)", **STAGE_FLOW_OPTIONS)
def pairs_stage_flow(
    policy: ArtifactRef, improver: ArtifactRef, data: ArtifactRef, cfg: PairsStageConfig, ctx: StageContext
) -> ArtifactRef:
    return _run_stage_task(pairs_task, ctx, policy=policy, improver=improver, data=data, cfg=cfg)


@flow(name="dpo", description="GPU stage: DPO of the policy on the generated pairs", **STAGE_FLOW_OPTIONS)
def dpo_stage_flow(start: ArtifactRef, pairs: ArtifactRef, cfg: DPOStageConfig, ctx: StageContext) -> ArtifactRef:
    return _run_stage_task(dpo_task, ctx, start=start, pairs=pairs, cfg=cfg)


STAGE_FLOWS: dict[str, Any] = {
    "sft": sft_stage_flow,
    "sample": sample_stage_flow,
    "ppl_filter": ppl_filter_stage_flow,
    "improver_sft": improver_sft_stage_flow,
    "pairs": pairs_stage_flow,
    "dpo": dpo_stage_flow,
}


def entrypoint(stage: str) -> str:
    """`flows.stages:sft_stage_flow`: the entrypoint prefect.yaml names.

    Module form, not `flows/stages.py:...`: Prefect puts a script's folder first on sys.path,
    where flows/sgpo.py would shadow the `sgpo` package.
    """
    return f"flows.stages:{STAGE_FLOWS[stage].fn.__name__}"


def deployment_name(stage: str, prefix: str = "sgpo-stage") -> str:
    """`sft/sgpo-stage-sft`: the `<flow>/<deployment>` name run_deployment takes."""
    return f"{STAGE_FLOWS[stage].name}/{prefix}-{stage}"
