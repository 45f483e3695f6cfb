"""The GPU stages as Prefect flows: what the `cuda` work pool runs when a flow is distributed.

    sgpo pipeline (cpu pool) --run_deployment--> sft/sgpo-stage-sft (cuda pool) -> the sft stage
    sgpo-evaluate            --run_deployment--> alpaca_eval_generate/sgpo-stage-alpaca_eval_generate -> ...

One flow per GPU stage (a stage declared with `gpu=True`), derived from its declaration: the
flow runs the stage's Prefect task, i.e. the same function, cache key and store lookup as the
in-process pipeline, so local and distributed runs share finished stages. Its parameters are
`inputs` (the input ArtifactRefs by name), `cfg` (the stage's config section, typed, so the UI
renders it as a form), `ctx` and `params`. The flows' own results are persisted as JSON (a small
ArtifactRef); the parent reads the artifact back from the shared store by cache key
(`flows.dispatch`), which works whatever result storage the worker has.

Flow names are the stage names and deployments are `<stage>/<prefix>-<stage>` (ExecutionConfig);
`deployments/prefect.yaml` registers one deployment per flow here (a test checks the two agree).
"""

from __future__ import annotations

import inspect
from typing import Any

from prefect import flow

from artifacts.refs import ArtifactRef
from sgpo.core import Stage, StageContext
from sgpo.core.prefect_tasks import RESULT_OPTIONS, run_task
from sgpo.core.threads import configure_threads
from tasks import GPU_STAGES, get_stage


def stage_flow(st: Stage) -> Any:
    """The CUDA-pool flow of one stage."""

    def run(inputs, cfg, ctx, params=None):  # the signature below is what Prefect sees
        configure_threads("auto")  # the worker's own cores (or its OMP_NUM_THREADS)
        return run_task(st, cfg, ctx, inputs, params).ref  # the stage's error fails this flow run

    annotations = {
        "inputs": dict[str, ArtifactRef],
        "cfg": st.config,
        "ctx": StageContext,
        "params": dict[str, Any] | None,
        "return": ArtifactRef,
    }
    run.__annotations__ = annotations
    run.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                n,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=annotations[n],
                **({"default": None} if n == "params" else {}),
            )
            for n in ("inputs", "cfg", "ctx", "params")
        ],
        return_annotation=ArtifactRef,
    )
    run.__name__ = run.__qualname__ = f"{st.name}_stage_flow"
    run.__doc__ = f"GPU stage `{st.name}`: {st.description}."
    return flow(name=st.name, description=f"GPU stage: {st.description}", **RESULT_OPTIONS)(run)


STAGE_FLOWS: dict[str, Any] = {name: stage_flow(get_stage(name)) for name in GPU_STAGES}
# Module attributes: the entrypoints prefect.yaml names (flows.stages:sft_stage_flow, ...).
globals().update({f.fn.__name__: f for f in STAGE_FLOWS.values()})


def entrypoint(stage: str) -> str:
    """`flows.stages:sft_stage_flow`: the entrypoint prefect.yaml names (a module path, so the
    worker imports the installed packages, never a script folder first on sys.path)."""
    return f"flows.stages:{STAGE_FLOWS[stage].fn.__name__}"


def deployment_name(stage: str, prefix: str = "sgpo-stage") -> str:
    """`sft/sgpo-stage-sft`: the `<flow>/<deployment>` name run_deployment takes."""
    return f"{STAGE_FLOWS[stage].name}/{prefix}-{stage}"
