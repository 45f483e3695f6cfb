"""Progress of long stages (thousands of paid LLM calls, long generation): where people look.

`stage_progress(stage, total)` returns a `(done, total) -> None` callback (the shape
`sgpo.llm.client.call_all(progress=...)` takes) that, throttled:

* inside a Prefect flow or task run, keeps a progress artifact up to date (key
  `<stage>-progress`, shown on the run's page in the UI, with "done/total" as description);
* on an interactive terminal (stderr is a TTY), draws a tqdm bar;
* otherwise logs a line now and then (and at the end) to the given logger.

It never fails the stage: outside Prefect, without a Prefect API, or when the API errors, the
artifact part switches itself off (logged at debug level). The callback may be called from any
thread (call_all calls it from its event-loop thread); each update is a short blocking call,
at most one per `min_interval_s`, plus the final one.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import IO, Any
from uuid import UUID

_log = logging.getLogger(__name__)


def progress_key(stage: str) -> str:
    """`<stage>-progress` in the characters Prefect allows in an artifact key."""
    # Prefect artifact keys: lowercase letters, numbers and dashes only
    slug = re.sub(r"[^a-z0-9-]+", "-", stage.lower()).strip("-") or "stage"
    return f"{slug}-progress"


_artifact_key = progress_key  # the name tests/test_progress.py knows


def in_prefect_run() -> bool:
    if "prefect" not in sys.modules:  # no run without it; importing it costs about a second
        return False
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        return TaskRunContext.get() is not None or FlowRunContext.get() is not None
    except Exception:  # prefect missing or broken: no run
        return False


class StageProgress:
    """The callback returned by `stage_progress`; also usable as a context manager (closes the bar)."""

    def __init__(
        self,
        stage: str,
        total: int,
        *,
        min_interval_s: float = 2.0,
        log_interval_s: float = 30.0,
        stream: IO[str] | None = None,
        logger: logging.Logger | None = None,
        prefect: bool | None = None,
        bar: bool | None = None,
    ):
        self.stage, self.total = stage, max(int(total), 0)
        self.min_interval_s, self.log_interval_s = min_interval_s, log_interval_s
        self.logger = logger
        self.done = 0
        self._lock = threading.Lock()
        self._last_push = self._last_log = float("-inf")
        self._finished = False
        self.artifact_id: UUID | None = None
        self._bar: Any = None
        stream = sys.stderr if stream is None else stream
        if bar is None:
            try:
                bar = bool(stream.isatty())
            except (AttributeError, ValueError):
                bar = False
        if bar:
            try:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=self.total,
                    desc=stage,
                    file=stream,
                    unit="call",
                    mininterval=0.5,
                    dynamic_ncols=True,
                    leave=True,
                )
            except Exception:  # pragma: no cover - tqdm missing: no bar
                self._bar = None
        if prefect is None:
            prefect = in_prefect_run()
        if prefect:
            self._create_artifact()

    # ------------------------------------------------------------------ prefect
    def _description(self) -> str:
        return f"{self.stage}: {self.done}/{self.total} done"

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else min(100.0, 100.0 * self.done / self.total)

    def _create_artifact(self) -> None:
        # Created here, in the task's own thread, so Prefect links it to the task run; later updates
        # go by id and work from any thread.
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                progress=self._percent(),
                key=progress_key(self.stage),
                description=self._description(),
                _sync=True,
            )
        except Exception as e:
            _log.debug("no progress artifact for %s: %r", self.stage, e)
            self.artifact_id = None

    def _push_artifact(self) -> None:
        if self.artifact_id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(
                self.artifact_id, self._percent(), description=self._description(), _sync=True
            )
        except Exception as e:
            _log.debug("progress artifact update failed, not updating it again: %r", e)
            self.artifact_id = None

    # ------------------------------------------------------------------ callback
    def __call__(self, done: int, total: int | None = None) -> None:
        with self._lock:
            if total is not None and total != self.total:
                self.total = max(int(total), 0)
                if self._bar is not None:
                    self._bar.total = self.total
            self.done = max(0, int(done))
            final = self.total > 0 and self.done >= self.total
            now = time.monotonic()
            if self._bar is not None:
                self._bar.update(self.done - self._bar.n)  # tqdm throttles its own redraws
                if final:
                    self._bar.refresh()
            if final and self._finished:
                return
            if final or now - self._last_push >= self.min_interval_s:
                self._last_push = now
                self._push_artifact()
            if (
                self.logger is not None
                and self._bar is None
                and (final or now - self._last_log >= self.log_interval_s)
            ):
                self._last_log = now
                self.logger.info(
                    "%s: %d/%d done (%.0f%%)", self.stage, self.done, self.total, self._percent()
                )
            if final:
                self._finished = True

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stage_progress(stage: str, total: int, **kwargs: Any) -> StageProgress:
    """A throttled `(done, total) -> None` progress callback for `stage` (see the module docstring).

    Keyword arguments: `min_interval_s` (artifact updates, default 2 s), `log_interval_s`
    (log lines without a TTY, default 30 s), `stream` (default stderr), `logger`, and `prefect`
    / `bar` to force either part on or off (default: detected).
    """
    return StageProgress(stage, total, **kwargs)
