"""The `report` stage: the run's figures and one self-contained HTML page (sgpo.report.html).

Runs at the end of the pipeline and evaluation flows (flows/reporting.py), cheap (seconds, CPU)
and cached like the others: its key is the run's stage list (label, ran/cached, artifact URI and
content hash) plus its own settings, so a rerun with the same artifacts and the same cache hits
reuses the page (the stages' seconds are a runtime setting, out of the key). A figure that
cannot be made is listed as missing with the reason; the stage itself never fails the flow (the
flow catches it too). Output: a table (one row per figure:
id, title, source artifact, PNG or the reason it is missing), `report.html` and `figures/*.png`
beside it, and the figures in MLflow (the stage's own run, and the run of the stage each is drawn from).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from artifacts.refs import ArtifactRef
from sgpo.config import Section, runtime_field
from sgpo.core import Job, stage, stage_main


class ReportConfig(Section):
    """Settings of the run report (not a recipe section: the flows use the defaults)."""

    edit_bins: int = Field(
        20, ge=2, le=200, description="Bins of the edit-distance histograms (Fig. 3/4) over [0, 1]"
    )
    ppl_bins: int = Field(
        30, ge=2, le=200, description="Bins of the perplexity histograms (Fig. 5)"
    )
    seconds: dict[str, float] = runtime_field(
        default_factory=dict,
        description="Wall-clock seconds of each stage label in the run that makes the report (the "
        "stage table's 's (this run)' column); not in the key: a report reused by a later run with "
        "the same stages and cache hits shows the times of the run that made it, named at its top",
    )


@stage(
    "report",
    section="report",
    code_version="3",  # 3: the stage table's "s (this run)" column
    flows=("pipeline", "evaluation"),
    description="the run's figures (papers' Fig. 3/4/5, training curves, judge, stage costs) and an HTML report",
)
def report(job: Job, cfg: ReportConfig, stages: Any, title: str) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.report.html import REPORT_FILE, build, entries_from_stages, log_figures

    items = json.loads(stages) if isinstance(stages, str) else list(stages)
    items = [{"seconds": cfg.seconds.get(s["label"]), **s} for s in items]
    so = job.store.storage_options
    entries = entries_from_stages(items, so)
    meta = {
        "run": str(job.ctx.run_id or ""),
        "stages": str(len(entries)),
        "ran": str(sum(e.status == "ran" for e in entries)),
        "cached": str(sum(e.status == "cached" for e in entries)),
    }
    html, figures, _run = build(
        entries, so, title=title, meta=meta, edit_bins=cfg.edit_bins, ppl_bins=cfg.ppl_bins
    )
    for f in figures:
        if f.png:
            job.store.publish_bytes(job.stage.name, job.key, f"figures/{f.id}.png", f.png)
    html_uri = job.store.publish_bytes(job.stage.name, job.key, REPORT_FILE, html.encode("utf-8"))
    for f in figures:
        if f.missing:
            job.log.warning("report: figure %s not made: %s", f.id, f.missing)
    n_logged = log_figures(
        job.ctx.tracking, figures, entries, own_run_id=job.tracker.run_id if job.tracker else None
    )
    rows = [
        {
            "id": f.id,
            "title": f.title,
            "source": f.source,
            "source_uri": f.source_uri,
            "status": "ok" if f.png else "missing",
            "reason": f.missing,
            "png": f.png,
        }
        for f in figures
    ]
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("title", pa.string()),
            ("source", pa.string()),
            ("source_uri", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("png", pa.binary()),
        ]
    )
    summary = {
        "html": html_uri,
        "figures": sum(1 for f in figures if f.png),
        "missing": {f.id: f.missing for f in figures if f.missing},
        "mlflow_figures_logged": n_logged,
    }
    return job.publish_table(
        pa.Table.from_pylist(rows, schema=schema), summary=summary, extra={"html": html_uri}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(report))
