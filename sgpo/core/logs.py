"""Where sgpo's warnings go: onto the run's output, the console and the Prefect run's logs alike.

Some warnings are the only sign of repaid or redone work (a stale lease taken over, a lease lost,
a damaged artifact recomputed), so they must not depend on `-v`. They come from module loggers
(`artifacts.lease`, `artifacts.store`, ...), which are not Prefect's, and from the stages' run
loggers (`stage_logger`, which marks its records with `sgpo_stage`):

* `warnings_to_run_logs` attaches Prefect's API handler to sgpo's own loggers (what
  PREFECT_LOGGING_EXTRA_LOGGERS does, without a variable every worker would need), for records
  logged inside a flow or task run;
* `warnings_to_console` is the quiet console of `sgpo run`: sgpo's own warnings and errors, one
  plain line each, while Prefect's own lines (and tracebacks) stay for `-v`.
"""

from __future__ import annotations

import logging
import sys

OWN_LOGGERS = ("artifacts", "sgpo", "flows", "tasks")
STAGE_MARK = "sgpo_stage"  # set on the records of a stage's run logger (stage_logger)


def is_own_warning(record: logging.LogRecord) -> bool:
    """A warning (or worse) that sgpo's own code logged, directly or through a stage's run logger."""
    return record.levelno >= logging.WARNING and (
        record.name.split(".")[0] in OWN_LOGGERS or hasattr(record, STAGE_MARK)
    )


def _in_a_run(record: logging.LogRecord) -> bool:
    if getattr(record, "flow_run_id", None):
        return True
    from sgpo.core.progress import in_prefect_run

    return in_prefect_run()


def warnings_to_run_logs() -> None:
    """sgpo's module loggers also log to the Prefect run they are called in (once per process)."""
    from prefect.logging.handlers import APILogHandler

    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            handler = APILogHandler()
            # outside a run (`sgpo stage`, a thread without the run's context) there is no run
            # to send to: the console still shows it
            handler.addFilter(_in_a_run)
            logger.addHandler(handler)


class _ConsoleWarnings(logging.Handler):
    """One line per record on the stderr of the moment (not the one at set-up: a test harness,
    or anything else, may have replaced it since)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging never fails the caller
            self.handleError(record)


def warnings_to_console() -> None:
    """sgpo's own warnings on the console, `[sgpo] WARNING: ...`, for a console that shows
    nothing else of the logging (Prefect's console handler silenced). Added once per process."""
    root = logging.getLogger()
    if any(isinstance(h, _ConsoleWarnings) for h in root.handlers):
        return
    handler = _ConsoleWarnings()
    handler.setFormatter(logging.Formatter("[sgpo] %(levelname)s: %(message)s"))
    handler.addFilter(is_own_warning)
    root.addHandler(handler)
