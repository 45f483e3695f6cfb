"""Stage 3, `annotate`: the external LLM writes y_imp (an improvement of the policy response
B that stays close to B and is at most as good as the SFT response A) and its own answer y_ext.

Every call goes through the durable client: results are journaled in the store as they
arrive and a re-run (after a crash, kill or failed API) sends only the missing requests.
Output columns: the sample columns + imp, ext (null when the call was dropped as invalid),
imp_status, ext_status (ok or the reason), edit distances imp-vs-B and imp-vs-A (Levenshtein,
characters; the paper's Fig. 3/4) and their normalised forms.
"""
from __future__ import annotations

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import AnnotateStageConfig, cache_payload
from sgpo.llm.client import CallSummary, ChatRequest, EndpointConfig
from sgpo.progress import stage_progress
from sgpo.prompts import load_prompt
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE = "annotate"
CODE_VERSION = "1"


class ExternalLLMNotConfigured(RuntimeError):
    pass


def endpoint_payload(endpoint: EndpointConfig) -> dict:
    """Only the model identifies the answers; URL, key name and concurrency do not."""
    return {"model": endpoint.model}


def config_payload(cfg: AnnotateStageConfig) -> dict:
    return {**cache_payload(cfg), "endpoint": endpoint_payload(cfg.endpoint)}


def prompt_versions(cfg: AnnotateStageConfig) -> dict[str, str]:
    out = {"improve": load_prompt(cfg.prompt).version}
    if cfg.with_external_answer:
        out["direct"] = load_prompt(cfg.direct_prompt).version
    return out


def cache_key(samples: ArtifactRef, cfg: AnnotateStageConfig) -> str:
    return stage_cache_key(
        STAGE, code_version=CODE_VERSION, config=config_payload(cfg),
        inputs={"samples": samples.content_hash}, prompts=prompt_versions(cfg),
    )


def build_requests(rows: list[dict], cfg: AnnotateStageConfig) -> list[ChatRequest]:
    improve = load_prompt(cfg.prompt)
    direct = load_prompt(cfg.direct_prompt)
    params = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed)
    reqs = []
    for i, r in enumerate(rows):
        text = improve.render(instruction=r["prompt"], response_a=r["reference"], response_b=r["policy"])
        reqs.append(ChatRequest(key=f"{i}/imp", messages=[{"role": "user", "content": text}], **params))
        if cfg.with_external_answer:
            text = direct.render(instruction=r["prompt"])
            reqs.append(ChatRequest(key=f"{i}/ext", messages=[{"role": "user", "content": text}], **params))
    return reqs


def edit_distances(improved: str, response_b: str, response_a: str) -> dict[str, float]:
    from rapidfuzz.distance import Levenshtein

    return {
        "edit_imp_vs_b": float(Levenshtein.distance(improved, response_b)),
        "edit_imp_vs_a": float(Levenshtein.distance(improved, response_a)),
        "norm_edit_imp_vs_b": Levenshtein.normalized_distance(improved, response_b),
        "norm_edit_imp_vs_a": Levenshtein.normalized_distance(improved, response_a),
    }


def cost_line(stage: str, result: "CallSummary", endpoint: EndpointConfig) -> str:
    """One line for the stage log: calls, tokens and what they cost (journaled calls included)."""
    cost = (f"${result.cost_usd:.4f}" if result.cost_usd is not None
            else "unknown (set endpoint.price_per_1m_prompt_tokens and price_per_1m_completion_tokens)")
    return (f"{stage}: {len(result.records)} calls to {endpoint.model} ({result.n_ok} ok, {result.n_invalid} invalid; "
            f"{result.n_sent} sent now in {result.n_http_requests} HTTP requests, {result.n_from_journal} from the "
            f"journal): {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens, cost {cost}")


def run_annotate(samples: ArtifactRef, cfg: AnnotateStageConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.llm.client import call_all

    if not cfg.endpoint.base_url:
        raise ExternalLLMNotConfigured(
            "annotate.endpoint.base_url is not set: configure the external LLM (base_url, model, api_key_env) "
            "or run through the pipeline flow, which starts the embedded local server"
        )
    store = ctx.open_store()
    key = cache_key(samples, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    rows = store.read_table(samples).to_pylist()
    requests = build_requests(rows, cfg)
    log = stage_logger(STAGE)
    log.info("annotating %d samples (%d calls) with %s", len(rows), len(requests), cfg.endpoint.model)
    progress = stage_progress(STAGE, len(requests), logger=log)
    with ctx.tracked(STAGE, config_payload(cfg)) as tracker, progress:
        result = call_all(
            requests, cfg.endpoint, journal_url=store.work_url(STAGE, key) + "/calls",
            namespace=f"{STAGE}:{CODE_VERSION}:" + ",".join(sorted(prompt_versions(cfg).values())),
            storage_options=store.storage_options, allow_truncated=cfg.accept_truncated,
            progress=progress,
        )
        by_key = {rec.key: rec for rec in result.records}
        table = []
        for i, r in enumerate(rows):
            imp, ext = by_key.get(f"{i}/imp"), by_key.get(f"{i}/ext")
            row = {**r,
                   "imp": imp.text if imp and imp.status == "ok" else None,
                   "imp_status": "ok" if imp and imp.status == "ok" else (imp.reason if imp else "missing"),
                   "ext": ext.text if ext and ext.status == "ok" else None,
                   "ext_status": ("ok" if ext and ext.status == "ok" else (ext.reason if ext else "missing"))
                   if cfg.with_external_answer else "not_requested"}
            dist = edit_distances(row["imp"], r["policy"], r["reference"]) if row["imp"] is not None else {
                "edit_imp_vs_b": None, "edit_imp_vs_a": None, "norm_edit_imp_vs_b": None, "norm_edit_imp_vs_a": None}
            table.append({**row, **dist})
        imp_d = [t["norm_edit_imp_vs_b"] for t in table if t["norm_edit_imp_vs_b"] is not None]
        ref_d = [t["norm_edit_imp_vs_a"] for t in table if t["norm_edit_imp_vs_a"] is not None]
        summary = {
            "calls": len(requests), "ok": result.n_ok, "invalid": result.n_invalid,
            "from_journal": result.n_from_journal, "sent": result.n_sent,
            "invalid_reasons": dict(result.invalid_reasons),
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "cost_usd": result.cost_usd, "http_requests": result.n_http_requests,
            "mean_norm_edit_imp_vs_b": sum(imp_d) / len(imp_d) if imp_d else None,
            "mean_norm_edit_imp_vs_a": sum(ref_d) / len(ref_d) if ref_d else None,
        }
        log.info("%s", cost_line(STAGE, result, cfg.endpoint))
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        ref = store.publish_table(
            STAGE, key, pa.Table.from_pylist(table),
            manifest=manifest(STAGE, CODE_VERSION, config_payload(cfg), {"samples": samples},
                              prompts=prompt_versions(cfg), seeds={"api": cfg.seed}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


# Retries here re-enter the stage, which resumes from the journal: no finished call is repaid.
@task(name="annotate", cache_key_fn=lambda _c, p: cache_key(p["samples"], p["cfg"]), retries=1,
      retry_delay_seconds=30, **TASK_DEFAULTS)
def annotate_task(samples: ArtifactRef, cfg: AnnotateStageConfig, ctx: StageContext) -> ArtifactRef:
    return run_annotate(samples, cfg, ctx)
