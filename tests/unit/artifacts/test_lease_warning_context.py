"""The heartbeat's warning belongs to the run that took the lease (issue 24, item 5): "lost the
lease ... another run may repeat this work" is logged from the lease's heartbeat thread, and
Prefect finds a log line's run in context variables, which a new thread does not inherit, so the
line reached no run's logs. The heartbeat now runs in the context of the thread that took the
lease; a context variable of the test's own stands in for Prefect's."""

from __future__ import annotations

import contextvars
import json
import logging
import time

from artifacts.lease import Lease
from artifacts.store import ArtifactStore

RUN = contextvars.ContextVar("run", default=None)


class _Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.getMessage(), RUN.get()))


def test_lost_the_lease_is_logged_in_the_takers_context(tmp_path):
    seen = _Seen()
    logger = logging.getLogger("artifacts.lease")
    logger.addHandler(seen)
    RUN.set("run-1")
    lease = Lease(ArtifactStore(str(tmp_path)), "annotate", "k" * 64, timeout_s=0.2)
    try:
        assert lease.try_acquire() is None
        with open(lease.path) as f:
            holder = json.load(f)
        with open(lease.path, "w") as f:  # another run took it over as stale
            json.dump({**holder, "token": "another run's"}, f)
        deadline = time.monotonic() + 10
        while not any("lost the lease" in m for m, _ in seen.records):
            assert time.monotonic() < deadline, seen.records
            time.sleep(0.02)
    finally:
        lease.release()
        logger.removeHandler(seen)
    assert [run for m, run in seen.records if "lost the lease" in m] == ["run-1"]
