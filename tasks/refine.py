"""Stage `refine`: another model's refinement of the answers a `pairs` table refined, for the check of
the SGPO paper's Fig. 8/10 (Sec. 4.4.2): the self-improver's refinements of the policy's answers
are judged against the INITIAL policy's refinements of the same answers (and against y_sft).

Input: a pairs table (the policy's answer y in `rejected`, the self-improver's y+ in `chosen`) and
the refiner (pi_sft, the initial policy). Each y is refined with the same refining prompt and
sampling as the pairs stage (the `pairs` section), inside the row's conversation. Output: the
pairs rows plus `refinement` (the refiner's y+) and `refinement_finish_reason`.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import PairsStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import earlier_turns
from sgpo.prompts import load_prompt
from sgpo.prompts.refine import refine_messages, refine_prompt_name


def prompt_versions(cfg: PairsStageConfig) -> dict[str, str]:
    return {"refine": load_prompt(refine_prompt_name(cfg)).version}


@stage(
    "refine",
    section="pairs",
    gpu=True,
    prompts=prompt_versions,
    description="another model (the initial policy) refines the answers of a pairs table (Fig. 8/10)",
)
def refine(
    job: Job, refiner: ArtifactRef, pairs: ArtifactRef, cfg: PairsStageConfig
) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generate import open_generator

    rows = job.read_rows(pairs)
    convs = [
        refine_messages(cfg, r["prompt"], r["rejected"], r["reference"], earlier_turns(r))
        for r in rows
    ]
    one = cfg.sampling.model_copy(update={"n": 1})  # one refinement per answer
    gen = open_generator(job.model_dir(refiner), one, trust_remote_code=job.ctx.trust_remote_code)
    try:
        outs = gen.generate(convs, one)
    finally:
        gen.close()
    table = [
        {**r, "refinement": o[0].text, "refinement_finish_reason": o[0].finish_reason}
        for r, o in zip(rows, outs, strict=True)
    ]
    summary = {
        "rows": len(table),
        "truncated": sum(t["refinement_finish_reason"] == "length" for t in table),
    }
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table), summary=summary, seeds={"sampling": cfg.sampling.seed}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(refine))
