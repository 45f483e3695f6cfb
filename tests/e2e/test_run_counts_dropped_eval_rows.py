"""An eval row that cannot be judged (an empty reference) is counted wherever a count is printed
(issue 24, item 6): it was dropped at prepare with no word, and the final line said "15 of 15
prompts judged" for a 16-row file. One real `sgpo run tiny method=sft`, without -v."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgpo.data.sources import BUNDLED_DIR

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_dropped_eval_row_is_on_the_console_and_in_the_final_line(tmp_path):
    rows = [
        json.loads(line) for line in (BUNDLED_DIR / "tiny" / "eval.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 16
    rows[5]["output"] = "  "  # the reference the judge compares against
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "run", "tiny", "method=sft"]
        + [f"data.eval.path={data}", f"store.url={tmp_path / 'store'}", "tracking.enabled=false"],
        cwd=tmp_path,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
            "PREFECT_HOME": str(tmp_path / "prefect"),
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    console = run.stdout + run.stderr
    assert "1 of 16 rows dropped (no prompt, or an empty response / reference)" in console
    [stage_line] = [ln for ln in run.stdout.splitlines() if ln.startswith("[sgpo] prepare[eval]")]
    assert stage_line.endswith(
        " (1 of 16 rows dropped: no prompt, or an empty response / reference)"
    )
    [judge_line] = [ln for ln in run.stdout.splitlines() if ln.startswith("[sgpo] judge:")]
    assert "15 of 15 prompts judged (1 of 16 rows of the eval data dropped: " in judge_line
