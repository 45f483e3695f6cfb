"""A lease held elsewhere (artifacts.lease) is not taken over while its heartbeat is fresh;
released, it is free; a takeover that comes too late restores the winner's lease. On a local folder,
with the lease's own heartbeat thread. Two real processes on one stage, stale leases and S3:
tests/integration/core/test_stage_lease.py."""

from __future__ import annotations

import time

import pytest


def test_a_live_lease_with_a_fresh_heartbeat_is_respected(tmp_path):
    """Unit level: a lease held elsewhere is not taken over while its heartbeat is fresh; released, it is free."""
    from artifacts.lease import Lease, StageBusy, acquire_or_wait
    from artifacts.store import ArtifactStore

    st = ArtifactStore(str(tmp_path / "store"))
    first = Lease(st, "annotate", "k" * 64, timeout_s=0.4)
    assert first.try_acquire() is None
    second = Lease(st, "annotate", "k" * 64, timeout_s=0.4)
    time.sleep(1.0)  # > the timeout: only the heartbeat (every timeout/4) keeps it live
    assert second.try_acquire() is not None
    with pytest.raises(StageBusy, match="another run is computing"):
        acquire_or_wait(second, on_busy="fail", poll_s=0.05, finished=lambda: None)
    # a takeover that comes too late (another run took the stale lease first) restores that run's lease
    stale, _ = second._read()
    first._stop.set()
    first._thread.join()
    time.sleep(0.5)  # first's lease is stale now
    third = Lease(st, "annotate", "k" * 64, timeout_s=0.4)
    assert third.try_acquire() is None
    assert second._take_over(stale, None) is False
    assert second._read()[0]["token"] == third.token
    third.release()
    assert second.try_acquire() is None
    second.release()
