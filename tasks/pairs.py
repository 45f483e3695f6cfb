"""Stage 6, `pairs`: on-policy preference pairs for D_po.

y = policy(x) with the plain policy prompt; y+ = improver(refine_prompt(x, y, y_sft)) with the
SFT reference (or without it, for the No-Ref ablation). Chosen y+, rejected y. With
`chosen: sft` the chosen answer is y_sft itself (SGPO-diamond; SPIN when the policy is pi_sft).
With shared parameters `policy` and `improver` are the same checkpoint and it is loaded once.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import PairsStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import conversation
from sgpo.prompts import load_prompt


def refine_prompt_name(cfg: PairsStageConfig) -> str:
    return cfg.prompt if cfg.refine_with_reference else cfg.no_reference_prompt


def refine_messages(
    cfg: PairsStageConfig, instruction: str, response: str, reference: str
) -> list[dict[str, str]]:
    prompt = load_prompt(refine_prompt_name(cfg))
    fields = {"instruction": instruction, "response": response}
    if cfg.refine_with_reference:
        fields["reference"] = reference
    return [{"role": "user", "content": prompt.render(**fields)}]


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


@stage(
    "pairs",
    section="pairs",
    # 2: the transformers back-end seeds each sample (not each batch); the back-end is in the key
    code_version="2",
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
                refine_messages(cfg, r["prompt"], y, r["reference"])
                for r, s in zip(rows, policy_texts)
                for y in s
            ]
            one = cfg.sampling.model_copy(update={"n": 1})  # one refinement per policy sample
            refined = [s[0].text for s in gen.generate(convs, one)]
    finally:
        gen.close()
    table = build_pairs(rows, policy_texts, refined, cfg)
    n_same = sum(t["chosen"] == t["rejected"] for t in table)
    job.log.info("built %d pairs (%d with chosen == rejected)", len(table), n_same)
    summary = {"pairs": len(table), "chosen_equals_rejected": n_same}
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table), summary=summary, seeds={"sampling": cfg.sampling.seed}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(pairs))
