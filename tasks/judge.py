"""Stage 8, `judge`: pairwise win rate of the policy against the eval set's baseline answers.

The policy answers each eval prompt (sampling settings from the config); the judge LLM sees
the instruction and both outputs, in a random order per instruction (seeded), and answers one
token, "m" (first shown) or "M" (second shown). The preference comes from the top logprobs of
that token with the SAME function the AlpacaEval metric code uses (sgpo.metrics.alpaca_eval),
mapped back to output_1 = baseline, output_2 = model. A row without either label token in the
top logprobs has no preference and is counted as unlabelled, as upstream does.
"""
from __future__ import annotations

import random

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import JudgeStageConfig, cache_payload
from sgpo.llm.client import ChatRequest
from sgpo.progress import stage_progress
from sgpo.prompts import load_prompt
from tasks.annotate import cost_line, endpoint_payload
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE = "judge"
CODE_VERSION = "1"


def config_payload(cfg: JudgeStageConfig) -> dict:
    return {**cache_payload(cfg), "endpoint": endpoint_payload(cfg.endpoint)}


def cache_key(policy: ArtifactRef, data: ArtifactRef, cfg: JudgeStageConfig) -> str:
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=config_payload(cfg),
        inputs={"policy": policy.content_hash, "data": data.content_hash},
        prompts={"judge": load_prompt(cfg.prompt).version},
    )


def model_shown_first(seed: int, prompt_id: str) -> bool:
    """Per-instruction display order, stable across runs and processes."""
    return random.Random(f"{seed}:{prompt_id}").random() < 0.5


def judge_requests(rows: list[dict], answers: list[str], cfg: JudgeStageConfig) -> tuple[list[ChatRequest], list[bool]]:
    prompt = load_prompt(cfg.prompt)
    reqs, orders = [], []
    for i, (r, answer) in enumerate(zip(rows, answers)):
        first = model_shown_first(cfg.seed, r["prompt_id"])
        shown = (answer, r["reference"]) if first else (r["reference"], answer)
        text = prompt.render(instruction=r["prompt"], output_1=shown[0], output_2=shown[1])
        reqs.append(ChatRequest(key=f"{i}/judge", messages=[{"role": "user", "content": text}],
                                temperature=cfg.judge_temperature, top_p=1.0, max_tokens=1,
                                top_logprobs=cfg.top_logprobs))
        orders.append(first)
    return reqs, orders


def run_judge(policy: ArtifactRef, data: ArtifactRef, cfg: JudgeStageConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generation import answer_each
    from sgpo.llm.client import call_all
    from sgpo.metrics.alpaca_eval import preference_from_top_logprobs, win_rate_metrics
    from tasks.annotate import ExternalLLMNotConfigured

    if not cfg.endpoint.base_url:
        raise ExternalLLMNotConfigured("judge.endpoint.base_url is not set: configure the judge LLM")
    store = ctx.open_store()
    key = cache_key(policy, data, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    rows = store.read_table(data).to_pylist()
    log = stage_logger(STAGE)
    with ctx.tracked(STAGE, config_payload(cfg)) as tracker:
        answers = [g.text for g in answer_each(store.model_dir(policy), [r["prompt"] for r in rows], cfg.sampling,
                                                trust_remote_code=ctx.trust_remote_code)]
        reqs, orders = judge_requests(rows, answers, cfg)
        with stage_progress(STAGE, len(reqs), logger=log) as progress:
            result = call_all(
                reqs, cfg.endpoint, journal_url=store.work_url(STAGE, key) + "/calls",
                namespace=f"{STAGE}:{CODE_VERSION}:{load_prompt(cfg.prompt).version}",
                storage_options=store.storage_options, allow_truncated=True,  # max_tokens=1 by design
                progress=progress,
            )
        log.info("%s", cost_line(STAGE, result, cfg.endpoint))
        table = []
        for r, answer, first, rec in zip(rows, answers, orders, result.records):
            top = rec.top_logprobs[0]["top_logprobs"] if rec.status == "ok" and rec.top_logprobs else []
            pref = preference_from_top_logprobs(top, model_first=first) if top else None
            table.append({"prompt_id": r["prompt_id"], "instruction": r["prompt"], "output_1": r["reference"],
                          "output_2": answer, "model_shown_first": first, "preference": pref,
                          "judge_output": rec.text, "judge_status": rec.status if rec.status == "ok" else rec.reason,
                          "judge_raw": rec.raw_response})
        prefs = [t["preference"] for t in table if t["preference"] is not None]
        metrics = win_rate_metrics(prefs, lengths_model=[len(t["output_2"]) for t in table if t["preference"] is not None]) if prefs else {}
        summary = {"n": len(table), "n_labelled": len(prefs), "win_rate": metrics.get("win_rate"),
                   "standard_error": metrics.get("standard_error"), "discrete_win_rate": metrics.get("discrete_win_rate"),
                   "avg_length": sum(len(a) for a in answers) / max(len(answers), 1),
                   "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                   "cost_usd": result.cost_usd, "http_requests": result.n_http_requests}
        log.info("judge: win rate %s over %d labelled of %d", summary["win_rate"], len(prefs), len(table))
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        ref = store.publish_table(
            STAGE, key, pa.Table.from_pylist(table),
            manifest=manifest(STAGE, CODE_VERSION, config_payload(cfg), {"policy": policy, "data": data},
                              prompts={"judge": load_prompt(cfg.prompt).version},
                              seeds={"order": cfg.seed, "sampling": cfg.sampling.seed}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


@task(name="judge", cache_key_fn=lambda _c, p: cache_key(p["policy"], p["data"], p["cfg"]), **TASK_DEFAULTS)
def judge_task(policy: ArtifactRef, data: ArtifactRef, cfg: JudgeStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_judge(policy, data, cfg, ctx)
