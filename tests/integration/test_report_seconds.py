"""The report's stage table shows how long each stage took in the run that made it ("s (this
run)"); the seconds stay out of the report's cache key (they differ on every run)."""

from __future__ import annotations

import re
from pathlib import Path

from sgpo.config import StoreConfig
from sgpo.core import StageContext
from sgpo.report.summary import StageReport


def _rows(html: str) -> list[list[str]]:
    table = re.search(r'<table id="stages">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert table, "no stage table in the report"
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    ]


def test_stage_table_has_this_runs_seconds_and_they_are_not_in_the_key(tmp_path):
    from flows.reporting import run_report_stage

    ctx = StageContext(store=StoreConfig(url=f"file://{tmp_path}/store"), run_id="run-1")
    stages = [
        StageReport(
            stage="sft",
            status="ran",
            seconds=12.34,
            uri=f"file://{tmp_path}/elsewhere/sft/0123",
            content_hash="a" * 64,
        ),
        StageReport(
            stage="prepare[sft]",
            status="cached",
            seconds=0.06,
            uri=f"file://{tmp_path}/elsewhere/prepare/4567",
            content_hash="b" * 64,
        ),
    ]
    done = run_report_stage(ctx, stages, "seconds probe", [])
    assert done is not None and done.status == "ran"
    html = Path(done.summary["html"].removeprefix("file://")).read_text()
    rows = {r[0]: r for r in _rows(html)}
    assert rows["sft"][1:3] == ["ran", "12.3"], rows
    assert rows["prepare[sft]"][1:3] == ["cached", "0.1"], rows

    # the same stages and cache hits another time, slower: the same report (seconds are no key)
    again = [s.model_copy(update={"seconds": s.seconds + 100}) for s in stages]
    reused = run_report_stage(
        ctx.model_copy(update={"run_id": "run-2"}), again, "seconds probe", []
    )
    assert reused is not None and reused.status == "cached" and reused.uri == done.uri
