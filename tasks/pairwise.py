"""Stage `pairwise`: win rate of one response column over another, in any table artifact.

For the paper's Table 1 (on the `annotate` artifact: `imp` vs `policy` = improved vs response B,
`imp` vs `reference` = improved vs response A) and Fig. 8. The judge is AlpacaEval's
(`tasks.alpaca_eval.PairJudge`: the official prompt, one token, top logprobs of "m"/"M", the
official per-instruction order), with `model_column` in the role of the evaluated model (output_2)
and `baseline_column` in the role of the baseline (output_1). Rows where either response is
missing or empty are skipped and counted. Output: a Parquet artifact of annotations in AlpacaEval's
format (plus `row` = the source row, and the two column names) and `report.json` with the win rate,
its standard error and the discrete win rate.
"""
from __future__ import annotations

from typing import Any

from prefect import task

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.eval_config import PairwiseConfig
from tasks.alpaca_eval import ANNOTATOR, BenchmarkDataError, PairJudge, call_totals, judge_pairs
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE = "pairwise"
CODE_VERSION = "1"


def config_payload(cfg: PairwiseConfig) -> dict[str, Any]:
    """The table is an input (by content hash), not config."""
    return {"name": cfg.name, "instruction_column": cfg.instruction_column, "model_column": cfg.model_column,
            "baseline_column": cfg.baseline_column, "max_rows": cfg.max_rows,
            "judge": PairJudge.from_config(cfg).payload()}


def cache_key(table: ArtifactRef, cfg: PairwiseConfig) -> str:
    return stage_cache_key(STAGE, code_version=CODE_VERSION, config=config_payload(cfg),
                           inputs={"table": table.content_hash},
                           prompts={"judge": PairJudge.from_config(cfg).prompt_version})


def select_pairs(rows: list[dict[str, Any]], cfg: PairwiseConfig) -> tuple[list[tuple[int, str, str, str]], int]:
    """[(source row, instruction, baseline response, model response)], and how many rows were skipped."""
    if rows:
        missing = [c for c in (cfg.instruction_column, cfg.model_column, cfg.baseline_column) if c not in rows[0]]
        if missing:
            raise BenchmarkDataError(f"pairwise {cfg.name!r}: table {cfg.table!r} has no column(s) {missing}; "
                                     f"columns: {list(rows[0])}")
    out, skipped = [], 0
    for i, r in enumerate(rows):
        x, b, m = r.get(cfg.instruction_column), r.get(cfg.baseline_column), r.get(cfg.model_column)
        if not all(isinstance(v, str) and v.strip() for v in (x, b, m)):
            skipped += 1
            continue
        out.append((i, x, b, m))
        if cfg.max_rows is not None and len(out) >= cfg.max_rows:
            break
    return out, skipped


def run_pairwise(table: ArtifactRef, cfg: PairwiseConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.metrics.alpaca_eval import win_rate_metrics
    from tasks.annotate import ExternalLLMNotConfigured

    if not cfg.endpoint.base_url:
        raise ExternalLLMNotConfigured(f"pairwise[{cfg.name}].endpoint.base_url is not set: configure the judge LLM")
    store = ctx.open_store()
    key = cache_key(table, cfg)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    log = stage_logger(STAGE)
    pairs, skipped = select_pairs(store.read_table(table).to_pylist(), cfg)
    judge = PairJudge.from_config(cfg)
    with ctx.tracked(STAGE, config_payload(cfg)) as tracker:
        results, calls = judge_pairs(
            [(x, b, m) for _, x, b, m in pairs], judge, journal_url=judge.journal_url(store, STAGE, CODE_VERSION),
            namespace=f"{STAGE}:{CODE_VERSION}:{judge.prompt_version}", storage_options=store.storage_options,
        )
        rows = [{"instruction": x, "output_1": b, "generator_1": cfg.baseline_column, "output_2": m,
                 "generator_2": cfg.model_column, "annotator": ANNOTATOR, "preference": res["preference"],
                 "price_per_example": res["price_per_example"], "raw_completion": res["raw_completion"],
                 "row": i, "is_switched_outputs": res["is_switched_outputs"], "judge_model": cfg.endpoint.model,
                 "judge_status": res["judge_status"]}
                for (i, x, b, m), res in zip(pairs, results)]
        prefs = [r["preference"] for r in rows]
        wr = win_rate_metrics(prefs, lengths_model=[r["output_2"] for r in rows],
                              lengths_baseline=[r["output_1"] for r in rows]) if rows else {}
        report = {
            "name": cfg.name, "table": table.uri, "model_column": cfg.model_column,
            "baseline_column": cfg.baseline_column, "judge_model": cfg.endpoint.model, "n": len(rows),
            "n_skipped": skipped, "n_labelled": wr.get("n_total", 0), "win_rate": wr.get("win_rate"),
            "standard_error": wr.get("standard_error"), "discrete_win_rate": wr.get("discrete_win_rate"),
            "n_wins": wr.get("n_wins"), "n_wins_base": wr.get("n_wins_base"), "n_draws": wr.get("n_draws"),
            "avg_length": wr.get("avg_length"), "avg_length_baseline": wr.get("avg_length_baseline"),
            "prompt_version": judge.prompt_version, **call_totals(calls),
        }
        report = {k: (None if isinstance(v, float) and v != v else v) for k, v in report.items()}  # NaN -> None
        log.info("pairwise %s: %s beats %s in %s%% (SE %s) of %d labelled pairs", cfg.name, cfg.model_column,
                 cfg.baseline_column, report["win_rate"], report["standard_error"], report["n_labelled"])
        tracker.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        report_uri = store.publish_json(STAGE, key, "report.json", report)  # before the manifest
        schema = pa.schema([("instruction", pa.string()), ("output_1", pa.string()), ("generator_1", pa.string()),
                            ("output_2", pa.string()), ("generator_2", pa.string()), ("annotator", pa.string()),
                            ("preference", pa.float64()), ("price_per_example", pa.float64()),
                            ("raw_completion", pa.string()), ("row", pa.int64()), ("is_switched_outputs", pa.bool_()),
                            ("judge_model", pa.string()), ("judge_status", pa.string())])
        ref = store.publish_table(
            STAGE, key, pa.Table.from_pylist(rows, schema=schema),
            manifest=manifest(STAGE, CODE_VERSION, config_payload(cfg), {"table": table},
                              prompts={"judge": judge.prompt_version}, seeds={"order": cfg.order_seed},
                              extra={"name": cfg.name, "report": report_uri}),
            summary={**report, "report_uri": report_uri}, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@task(name=STAGE, cache_key_fn=lambda _c, p: cache_key(p["table"], p["cfg"]), retries=1, retry_delay_seconds=30,
      **TASK_DEFAULTS)
def pairwise_task(table: ArtifactRef, cfg: PairwiseConfig, ctx: StageContext) -> ArtifactRef:
    return run_pairwise(table, cfg, ctx)
