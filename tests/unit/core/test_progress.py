"""sgpo.core.progress: a progress callback that never fails a stage, with a Prefect artifact inside runs
(a real flow run: tests/integration/core/test_progress.py)."""

from __future__ import annotations

import io
import logging

from sgpo.core.progress import StageProgress, _artifact_key, in_prefect_run, stage_progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_outside_prefect_it_logs_throttled_lines_and_never_fails(caplog):
    assert not in_prefect_run()
    log = logging.getLogger("sgpo.test.progress")
    with caplog.at_level(logging.INFO, logger="sgpo.test.progress"):
        p = stage_progress("annotate", 100, logger=log, stream=io.StringIO(), log_interval_s=3600)
        for done in range(1, 101):
            p(done, 100)
        p(100, 100)  # a repeated final call adds nothing
        p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["annotate: 1/100 done (1%)", "annotate: 100/100 done (100%)"]
    assert p.artifact_id is None


def test_a_tty_gets_a_bar(monkeypatch):
    stream = FakeTTY()
    with stage_progress("judge", 10, stream=stream) as p:
        for done in (3, 7, 10):
            p(done, 10)
    out = stream.getvalue()
    assert "judge" in out and "10/10" in out


def test_zero_total_and_growing_total_are_fine():
    p = stage_progress("x", 0, stream=io.StringIO())
    p(0, 0)
    p(5, 10)  # the caller learnt the total later
    assert p.total == 10 and p._percent() == 50.0


def test_prefect_api_errors_switch_the_artifact_off(monkeypatch):
    import prefect.artifacts

    def broken(*a, **k):
        raise RuntimeError("no API")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", broken)
    p = StageProgress("annotate", 4, prefect=True, stream=io.StringIO())
    p(4, 4)  # no exception
    assert p.artifact_id is None
    assert _artifact_key("Annotate_stage 2") == "annotate-stage-2-progress"
