"""Stage 6, `pairs`: on-policy preference pairs for D_po.

y = policy(x) with the plain policy prompt; y+ = improver(refine_prompt(x, y, y_sft)) with the
SFT reference (or without it, for the No-Ref ablation). Chosen y+, rejected y. With
`chosen: sft` the chosen answer is y_sft itself (SGPO-diamond; SPIN when the policy is pi_sft).
With shared parameters `policy` and `improver` are the same checkpoint and it is loaded once.

A multi-turn or system-prompted row: y answers the whole conversation, and the refining prompt is
asked as the final user turn of that same conversation (its system prompt and earlier turns
before it), so the refiner sees what y was written for. The output keeps the row's `messages`.

A pair whose chosen or rejected answer is empty (or whitespace) is dropped and counted (summary
`empty_dropped`, `empty_chosen`, `empty_rejected`, the stage line): "something beats nothing" is
not the preference DPO is meant to learn here, and an empty chosen answer would train the policy
to stop at once. More than `pairs.max_empty_fraction` of them fails the stage (a broken model).
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import PairsStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.core.job import EMPTY_DROPPED, IDENTICAL_PAIRS
from sgpo.data.sources import (
    check_empty_answers,
    check_empty_reused,
    conversation,
    earlier_turns,
    is_empty_answer,
)
from sgpo.prompts import load_prompt
from sgpo.prompts.refine import refine_messages, refine_prompt_name

__all__ = ["build_pairs", "pairs", "prompt_versions", "refine_messages", "refine_prompt_name"]


def build_pairs(
    rows: list[dict],
    policy_texts: list[list[str]],
    refined: list[str] | None,
    cfg: PairsStageConfig,
) -> list[dict]:
    """Chosen/rejected rows; `refined` is aligned with the flattened policy samples."""
    out, k = [], 0
    for r, samples in zip(rows, policy_texts):
        for j, y in enumerate(samples):
            chosen = r["reference"] if cfg.chosen == "sft" else refined[k]
            k += 1
            out.append(
                {
                    "prompt_id": r["prompt_id"],
                    "prompt": r["prompt"],
                    "messages": r.get("messages"),
                    "reference": r["reference"],
                    "sample_index": j,
                    "chosen": chosen,
                    "rejected": y,
                }
            )
    return out


def prompt_versions(cfg: PairsStageConfig) -> dict[str, str]:
    return (
        {"refine": load_prompt(refine_prompt_name(cfg)).version} if cfg.chosen == "refined" else {}
    )


def check_reused(ref: ArtifactRef, cfg: PairsStageConfig) -> None:
    """A stored artifact is reused only if its share of empty answers is one this config accepts."""
    check_empty_reused("pairs", ref, "pairs", cfg.max_empty_fraction)


@stage(
    "pairs",
    section="pairs",
    check_reuse=check_reused,
    # 2: the refining prompt inside the row's conversation; 3: empty answers dropped, and the
    # transformers back-end seeds each sample (not each batch; the back-end is in the key)
    code_version="3",
    gpu=True,
    prompts=prompt_versions,
    description="on-policy pairs: y = policy(x) rejected, y+ = improver(refine(x, y, y_sft)) chosen",
)
def pairs(
    job: Job,
    policy: ArtifactRef,
    improver: ArtifactRef | None,
    data: ArtifactRef,
    cfg: PairsStageConfig,
) -> ArtifactRef:
    # `improver` is only read (and only in the key) with chosen=refined: SPIN / SGPO-diamond pairs do not
    # depend on an improver they never call.
    import pyarrow as pa

    from sgpo.generate import open_generator

    rows = job.read_rows(data)
    gen = open_generator(
        job.model_dir(policy), cfg.sampling, trust_remote_code=job.ctx.trust_remote_code
    )
    try:
        outs = gen.generate([conversation(r) for r in rows], cfg.sampling)
        policy_texts = [[g.text for g in s] for s in outs]
        refined = None
        if cfg.chosen == "refined":
            if improver is None:
                raise ValueError(
                    "pairs.chosen=refined needs the improver input (the model that refines)"
                )
            if improver.content_hash != policy.content_hash:
                gen.close()
                gen = open_generator(
                    job.model_dir(improver),
                    cfg.sampling,
                    trust_remote_code=job.ctx.trust_remote_code,
                )
            convs = [
                refine_messages(cfg, r["prompt"], y, r["reference"], earlier_turns(r))
                for r, s in zip(rows, policy_texts)
                for y in s
            ]
            one = cfg.sampling.model_copy(update={"n": 1})  # one refinement per policy sample
            refined = [s[0].text for s in gen.generate(convs, one)]
    finally:
        gen.close()
    built = build_pairs(rows, policy_texts, refined, cfg)
    table = [
        t for t in built if not is_empty_answer(t["chosen"]) and not is_empty_answer(t["rejected"])
    ]
    empty = len(built) - len(table)
    check_empty_answers(
        "pairs", empty, len(built), cfg.max_empty_fraction, "pairs.max_empty_fraction"
    )
    n_same = sum(t["chosen"] == t["rejected"] for t in table)
    job.log.info(
        "built %d pairs (%d with chosen == rejected; %d dropped: empty chosen or rejected)",
        len(table),
        n_same,
        empty,
    )
    summary = {
        "pairs": len(table),
        IDENTICAL_PAIRS: n_same,
        EMPTY_DROPPED: empty,
        "empty_chosen": sum(is_empty_answer(t["chosen"]) for t in built),
        "empty_rejected": sum(is_empty_answer(t["rejected"]) for t in built),
    }
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table), summary=summary, seeds={"sampling": cfg.sampling.seed}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(pairs))
