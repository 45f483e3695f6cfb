"""Stage 6, `pairs`: on-policy preference pairs for D_po.

y = policy(x) with the plain policy prompt; y+ = improver(refine_prompt(x, y, y_sft)) with the
SFT reference (or without it, for the No-Ref ablation). Chosen y+, rejected y. With
`chosen: sft` the chosen answer is y_sft itself (SGPO-diamond; SPIN when the policy is pi_sft).
With shared parameters `policy` and `improver` are the same checkpoint and it is loaded once.
"""
from __future__ import annotations

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import PairsStageConfig, cache_payload
from sgpo.prompts import load_prompt
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE = "pairs"
CODE_VERSION = "1"


def refine_prompt_name(cfg: PairsStageConfig) -> str:
    return cfg.prompt if cfg.refine_with_reference else cfg.no_reference_prompt


def refine_messages(cfg: PairsStageConfig, instruction: str, response: str, reference: str) -> list[dict[str, str]]:
    prompt = load_prompt(refine_prompt_name(cfg))
    fields = {"instruction": instruction, "response": response}
    if cfg.refine_with_reference:
        fields["reference"] = reference
    return [{"role": "user", "content": prompt.render(**fields)}]


def build_pairs(rows: list[dict], policy_texts: list[list[str]], refined: list[str] | None, cfg: PairsStageConfig) -> list[dict]:
    """Chosen/rejected rows; `refined` is aligned with the flattened policy samples."""
    out, k = [], 0
    for r, samples in zip(rows, policy_texts):
        for j, y in enumerate(samples):
            chosen = r["reference"] if cfg.chosen == "sft" else refined[k]
            k += 1
            out.append({"prompt_id": r["prompt_id"], "prompt": r["prompt"], "reference": r["reference"],
                        "sample_index": j, "chosen": chosen, "rejected": y})
    return out


def cache_key(policy: ArtifactRef, improver: ArtifactRef, data: ArtifactRef, cfg: PairsStageConfig) -> str:
    prompts = {"refine": load_prompt(refine_prompt_name(cfg)).version} if cfg.chosen == "refined" else {}
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=cache_payload(cfg),
        inputs={"policy": policy.content_hash, "improver": improver.content_hash, "data": data.content_hash},
        prompts=prompts,
    )


def run_pairs(policy: ArtifactRef, improver: ArtifactRef, data: ArtifactRef, cfg: PairsStageConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generation import open_generator

    store = ctx.open_store()
    key = cache_key(policy, improver, data, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    rows = store.read_table(data).to_pylist()
    log = stage_logger(STAGE)
    with ctx.tracked(STAGE, cache_payload(cfg)) as tracker:
        gen = open_generator(store.model_dir(policy), cfg.sampling, trust_remote_code=ctx.trust_remote_code)
        try:
            outs = gen.generate([[{"role": "user", "content": r["prompt"]}] for r in rows], cfg.sampling)
            policy_texts = [[g.text for g in s] for s in outs]
            refined = None
            if cfg.chosen == "refined":
                if improver.content_hash != policy.content_hash:
                    gen.close()
                    gen = open_generator(store.model_dir(improver), cfg.sampling, trust_remote_code=ctx.trust_remote_code)
                convs = [refine_messages(cfg, r["prompt"], y, r["reference"]) for r, s in zip(rows, policy_texts) for y in s]
                one = cfg.sampling.model_copy(update={"n": 1})  # one refinement per policy sample
                refined = [s[0].text for s in gen.generate(convs, one)]
        finally:
            gen.close()
        table = build_pairs(rows, policy_texts, refined, cfg)
        n_same = sum(t["chosen"] == t["rejected"] for t in table)
        log.info("built %d pairs (%d with chosen == rejected)", len(table), n_same)
        summary = {"pairs": len(table), "chosen_equals_rejected": n_same}
        tracker.log_metrics(summary)
        ref = store.publish_table(
            STAGE, key, pa.Table.from_pylist(table),
            manifest=manifest(STAGE, CODE_VERSION, cache_payload(cfg), {"policy": policy, "improver": improver, "data": data},
                              seeds={"sampling": cfg.sampling.seed}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


@task(name="pairs", cache_key_fn=lambda _c, p: cache_key(p["policy"], p["improver"], p["data"], p["cfg"]), tags=["gpu"], **TASK_DEFAULTS)
def pairs_task(policy: ArtifactRef, improver: ArtifactRef, data: ArtifactRef, cfg: PairsStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_pairs(policy, improver, data, cfg, ctx)
