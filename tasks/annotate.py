"""Stage 3, `annotate`: the external LLM writes y_imp (an improvement of the policy response
B that stays close to B and is at most as good as the SFT response A) and its own answer y_ext.

A multi-turn or system-prompted row: both requests are asked as the final user turn of the row's
own conversation (its system prompt and earlier turns first), the one the policy answered, so the
external LLM improves (and writes) an answer to that conversation, not to its last message alone.

Every call goes through the durable client: results are journaled in the store as they
arrive and a re-run (after a crash, kill or failed API) sends only the missing requests.
Output columns: the sample columns + imp, ext (null when the call was dropped as invalid),
imp_status, ext_status (ok or the reason), edit distances imp-vs-B and imp-vs-A (Levenshtein,
characters; the paper's Fig. 3/4) and their normalised forms.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import AnnotateStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.core.progress import stage_progress
from sgpo.data.sources import after_turns, earlier_turns
from sgpo.llm.client import ChatRequest
from sgpo.llm.endpoint import require_endpoint
from sgpo.prompts import load_prompt


def prompt_versions(cfg: AnnotateStageConfig) -> dict[str, str]:
    out = {"improve": load_prompt(cfg.prompt).version}
    if cfg.with_external_answer:
        out["direct"] = load_prompt(cfg.direct_prompt).version
    return out


class UnusableAnswersError(RuntimeError):
    """Too few usable answers to publish (`annotate.min_usable_fraction`); not worth a task retry."""

    retriable = False


def build_requests(rows: list[dict], cfg: AnnotateStageConfig) -> list[ChatRequest]:
    improve = load_prompt(cfg.prompt)
    direct = load_prompt(cfg.direct_prompt)
    params = dict(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
    )
    reqs = []
    for i, r in enumerate(rows):
        turns = earlier_turns(r)
        text = improve.render(
            instruction=r["prompt"], response_a=r["reference"], response_b=r["policy"]
        )
        reqs.append(ChatRequest(key=f"{i}/imp", messages=after_turns(turns, text), **params))
        if cfg.with_external_answer:
            text = direct.render(instruction=r["prompt"])
            reqs.append(ChatRequest(key=f"{i}/ext", messages=after_turns(turns, text), **params))
    return reqs


def edit_distances(improved: str, response_b: str, response_a: str) -> dict[str, float]:
    from rapidfuzz.distance import Levenshtein

    return {
        "edit_imp_vs_b": float(Levenshtein.distance(improved, response_b)),
        "edit_imp_vs_a": float(Levenshtein.distance(improved, response_a)),
        "norm_edit_imp_vs_b": Levenshtein.normalized_distance(improved, response_b),
        "norm_edit_imp_vs_a": Levenshtein.normalized_distance(improved, response_a),
    }


def check_reused(ref: ArtifactRef, cfg: AnnotateStageConfig) -> None:
    """A stored annotation is reused only if it has the usable share this config asks for."""
    calls, ok = ref.summary.get("calls"), ref.summary.get("ok")
    if (
        isinstance(calls, int)
        and isinstance(ok, int)
        and calls
        and ok < cfg.min_usable_fraction * calls
    ):
        raise UnusableAnswersError(
            f"annotate: the stored artifact {ref.uri} has {ok} of {calls} usable answers, fewer than "
            f"annotate.min_usable_fraction={cfg.min_usable_fraction:g}, so it is not reused; lower "
            "min_usable_fraction to accept it, or set annotate.journal_namespace=NEW to re-ask"
        )


# Retries re-enter the stage, which resumes from the journal: no finished call is repaid.
@stage(
    "annotate",
    section="annotate",
    llm="endpoint",
    preflight=require_endpoint,
    check_reuse=check_reused,
    prompts=prompt_versions,
    code_version="2",  # 2: requests asked inside the row's conversation (system prompt, earlier turns)
    retries=1,
    description="the external LLM writes y_imp (close to B, no better than A) and y_ext; edit distances",
)
def annotate(job: Job, samples: ArtifactRef, cfg: AnnotateStageConfig) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.llm.client import call_all, cost_line

    rows = job.read_rows(samples)
    requests = build_requests(rows, cfg)
    log = job.log
    log.info(
        "annotating %d samples (%d calls) with %s", len(rows), len(requests), cfg.endpoint.model
    )
    with stage_progress("annotate", len(requests), logger=log) as progress:
        result = call_all(
            requests,
            cfg.endpoint,
            journal_url=job.work_url + "/calls",
            namespace=f"annotate:{job.stage.code_version}:"
            + ",".join(sorted(prompt_versions(cfg).values()))
            + (f":{cfg.journal_namespace}" if cfg.journal_namespace else ""),
            storage_options=job.store.storage_options,
            allow_truncated=cfg.accept_truncated,
            progress=progress,
        )
    log.info("%s", cost_line("annotate", result, cfg.endpoint))
    if requests and result.n_ok < cfg.min_usable_fraction * len(
        requests
    ):  # before anything is published
        raise UnusableAnswersError(
            f"annotate: {result.n_ok} of {len(requests)} answers were usable (invalid: {dict(result.invalid_reasons) or 'none'}); "
            f"fewer than annotate.min_usable_fraction={cfg.min_usable_fraction:g}, so nothing was published. Check "
            "annotate.endpoint (base_url, model) and annotate.max_tokens / accept_truncated. The paid answers stay in the "
            "journal (a rerun pays nothing for them again); to re-ask after fixing the endpoint set "
            "annotate.journal_namespace=NEW, to accept them lower annotate.min_usable_fraction"
        )
    by_key = {rec.key: rec for rec in result.records}
    table = []
    for i, r in enumerate(rows):
        imp, ext = by_key.get(f"{i}/imp"), by_key.get(f"{i}/ext")
        row = {
            **r,
            "imp": imp.text if imp and imp.status == "ok" else None,
            "imp_status": "ok"
            if imp and imp.status == "ok"
            else (imp.reason if imp else "missing"),
            "ext": ext.text if ext and ext.status == "ok" else None,
            "ext_status": (
                "ok" if ext and ext.status == "ok" else (ext.reason if ext else "missing")
            )
            if cfg.with_external_answer
            else "not_requested",
        }
        dist = (
            edit_distances(row["imp"], r["policy"], r["reference"])
            if row["imp"] is not None
            else {
                "edit_imp_vs_b": None,
                "edit_imp_vs_a": None,
                "norm_edit_imp_vs_b": None,
                "norm_edit_imp_vs_a": None,
            }
        )
        table.append({**row, **dist})
    imp_d = [t["norm_edit_imp_vs_b"] for t in table if t["norm_edit_imp_vs_b"] is not None]
    ref_d = [t["norm_edit_imp_vs_a"] for t in table if t["norm_edit_imp_vs_a"] is not None]
    summary = {
        "calls": len(requests),
        "ok": result.n_ok,
        "invalid": result.n_invalid,
        "from_journal": result.n_from_journal,
        "sent": result.n_sent,
        "invalid_reasons": dict(result.invalid_reasons),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": result.cost_usd,
        "http_requests": result.n_http_requests,
        "mean_norm_edit_imp_vs_b": sum(imp_d) / len(imp_d) if imp_d else None,
        "mean_norm_edit_imp_vs_a": sum(ref_d) / len(ref_d) if ref_d else None,
    }
    if cfg.journal_namespace:
        summary["journal_namespace"] = cfg.journal_namespace
    job.log_metrics(summary)
    return job.publish_table(pa.Table.from_pylist(table), summary=summary, seeds={"api": cfg.seed})


if __name__ == "__main__":
    raise SystemExit(stage_main(annotate))
