"""Evaluation stage `pairwise`: win rate of one response column over another, in any table artifact.

For the paper's Table 1 (on the `annotate` artifact: `imp` vs `policy` = improved vs response B,
`imp` vs `reference` = improved vs response A) and Fig. 8. The judge is the one pairwise judge of
`sgpo.evals.pairwise` (AlpacaEval's protocol), with `model_column` in the role of the evaluated model
(output_2) and `baseline_column` in the role of the baseline (output_1). Rows where either
response is missing or empty are skipped and counted. Output: a Parquet artifact of annotations in
AlpacaEval's format (`index` = the source row) and `report.json` with the win rate, its
standard error and the discrete win rate.
"""

from __future__ import annotations

from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.config import PairwiseConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import DatasetError
from sgpo.evals.pairwise import PairJudge
from sgpo.llm.endpoint import require_endpoint


def prompt_versions(cfg: PairwiseConfig) -> dict[str, str]:
    return {"judge": PairJudge.from_config(cfg).prompt_version}


def select_pairs(
    rows: list[dict[str, Any]], cfg: PairwiseConfig
) -> tuple[list[tuple[int, str, str, str]], int]:
    """[(source row, instruction, baseline response, model response)], and how many rows were skipped."""
    if rows:
        missing = [
            c
            for c in (cfg.instruction_column, cfg.model_column, cfg.baseline_column)
            if c not in rows[0]
        ]
        if missing:
            raise DatasetError(
                f"pairwise {cfg.name!r}: table {cfg.table!r} has no column(s) {missing}; "
                f"columns: {list(rows[0])}"
            )
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


def check_reused(ref: ArtifactRef, cfg: PairwiseConfig) -> None:
    from sgpo.evals.pairwise import check_reused

    check_reused(
        f"pairwise {cfg.name!r}", f"pairwise[{cfg.name}]", ref.summary, cfg.max_unlabelled_fraction
    )


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@stage(
    "pairwise",
    section="pairwise.<name>",
    recipe="evaluation",
    flows=("pipeline", "evaluation"),
    code_version="2",
    llm="endpoint",
    preflight=require_endpoint,
    check_reuse=check_reused,
    prompts=prompt_versions,
    retries=1,
    description="win rate of one response column over another in a table",
)
def pairwise(job: Job, table: ArtifactRef, cfg: PairwiseConfig) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.evals.alpaca_eval import win_rate_metrics
    from sgpo.evals.pairwise import (
        annotation_rows,
        annotation_schema,
        call_totals,
        check_judged,
        judge_pairs,
        label_report,
    )

    pairs, skipped = select_pairs(job.read_rows(table), cfg)
    judge = PairJudge.from_config(cfg)
    results, calls = judge_pairs([(x, b, m) for _, x, b, m in pairs], judge, store=job.store)
    check_judged(
        f"pairwise {cfg.name!r}", f"pairwise[{cfg.name}]", results, cfg.max_unlabelled_fraction
    )
    rows = annotation_rows(
        [
            {
                "instruction": x,
                "output_1": b,
                "generator_1": cfg.baseline_column,
                "dataset": None,
                "output_2": m,
                "generator_2": cfg.model_column,
                "index": i,
            }
            for i, x, b, m in pairs
        ],
        results,
        judge,
    )
    wr = (
        win_rate_metrics(
            [r["preference"] for r in rows],
            lengths_model=[r["output_2"] for r in rows],
            lengths_baseline=[r["output_1"] for r in rows],
        )
        if rows
        else {}
    )
    report = {
        "name": cfg.name,
        "table": table.uri,
        "model_column": cfg.model_column,
        "baseline_column": cfg.baseline_column,
        "judge_model": cfg.endpoint.model,
        "n": len(rows),
        "n_skipped": skipped,
        "n_labelled": wr.get("n_total", 0),
        "win_rate": wr.get("win_rate"),
        "standard_error": wr.get("standard_error"),
        "discrete_win_rate": wr.get("discrete_win_rate"),
        "n_wins": wr.get("n_wins"),
        "n_wins_base": wr.get("n_wins_base"),
        "n_draws": wr.get("n_draws"),
        "avg_length": wr.get("avg_length"),
        "avg_length_baseline": wr.get("avg_length_baseline"),
        "prompt_version": judge.prompt_version,
        **call_totals(calls),
        **label_report(results),
    }
    report = {
        k: (None if isinstance(v, float) and v != v else v) for k, v in report.items()
    }  # NaN -> None
    job.log.info(
        "pairwise %s: %s beats %s in %s%% (SE %s) of %d labelled pairs",
        cfg.name,
        cfg.model_column,
        cfg.baseline_column,
        report["win_rate"],
        report["standard_error"],
        report["n_labelled"],
    )
    job.log_metrics(report)
    report_uri = job.publish_json("report.json", report)  # before the manifest
    return job.publish_table(
        pa.Table.from_pylist(rows, schema=annotation_schema()),
        summary={**report, "report_uri": report_uri},
        seeds={"order": cfg.order_seed},
        extra={"name": cfg.name, "report": report_uri},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(pairwise))
