"""A lease on a stage's work: of two runs that need the same (stage, cache key), one computes it.

The lease is one small JSON object beside the artifact, `{artifact folder}/_lease.json`, holding
who computes it (pid, host, run id, start time) and a heartbeat the holder refreshes every
`timeout / 4` seconds. It is created atomically, so exactly one run gets it:

* a local store: `os.open(O_CREAT | O_EXCL)`;
* S3: a conditional PUT (`If-None-Match: *`, s3fs `mode="create"`), which S3 and moto's server
  refuse with 412 when the object exists. The heartbeat is a PUT with `If-Match: <our ETag>`, so a
  holder that lost its lease to a takeover notices instead of overwriting the new holder's.

A lease is stale, and is taken over, when its heartbeat is older than the timeout, or at once
when its holder is a process on this host that no longer exists (`kill -9`). A takeover is itself
atomic: locally the stale file is renamed away (only one rename succeeds, and a renamed lease that
turns out not to be the stale one is put back); on S3 a PUT with `If-Match: <the stale ETag>`.

A holder that stalls past the timeout (a laptop asleep, a stopped container, a long GC pause, a
preempted node) loses its lease to whoever finds it stale. So that two runs never pay for the same
call, the holder confirms the lease before each paid request (`confirm`, through `held_lease()`
while the stage runs): a heartbeat confirmed within half the timeout is proof enough (nobody takes
over a lease before the timeout); an older one is checked against the lease object, and a lost
lease raises `LeaseLost`: the run stops sending, and waits for the new holder's artifact instead.

Other kinds of store (none supported today) would get no lease: `acquire` then always succeeds.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"


class StageBusy(RuntimeError):
    """Another run holds the lease of this stage's work and `store.on_busy` is `fail`."""

    retriable = False


class LeaseLost(RuntimeError):
    """This run's lease was taken over while it worked (it stalled past the timeout): it stops
    before sending another paid request; `run_stage` then waits for the new holder's artifact."""

    retriable = False


_HELD: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("sgpo_lease", default=None)


@contextlib.contextmanager
def holding(lease: Lease) -> Iterator[Lease]:
    """While the stage's work runs: `held_lease()` is its lease (the paid-call client confirms it)."""
    token = _HELD.set(lease)
    try:
        yield lease
    finally:
        _HELD.reset(token)


def held_lease() -> Lease | None:
    """The lease of the stage running in this context, if any (read it before starting threads)."""
    return _HELD.get()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def describe(holder: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started_at", 0)))
    beat = now - float(holder.get("heartbeat_at", 0))
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} (run {holder.get('run_id')}), started {started}, "
        f"last heartbeat {beat:.0f}s ago"
    )


class Lease:
    """One (stage, key) lease in one store; `try_acquire` returns None when we hold it, else the holder."""

    def __init__(
        self,
        store: Any,
        stage: str,
        key: str,
        *,
        timeout_s: float = 300.0,
        run_id: str | None = None,
    ):
        self.store, self.stage, self.key = store, stage, key
        self.timeout_s, self.run_id = float(timeout_s), run_id
        self.path = f"{store._path(store.artifact_url(stage, key))}/{LEASE_FILE}"
        self.fs = store.fs
        self.local = store.is_local
        self.remote = not self.local and "s3" in (
            (store.fs.protocol,) if isinstance(store.fs.protocol, str) else tuple(store.fs.protocol)
        )
        self.token = uuid.uuid4().hex
        self.started_at = time.time()
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False
        self.lost = False
        self._confirmed_at = 0.0  # wall-clock time of the last write or read that proved it ours

    # ------------------------------------------------------------ the object
    def _body(self) -> bytes:
        return json.dumps(
            {
                "stage": self.stage,
                "key": self.key,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "run_id": self.run_id,
                "token": self.token,
                "started_at": self.started_at,
                "heartbeat_at": time.time(),
                "timeout_s": self.timeout_s,
            }
        ).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(holder, etag) of the lease now there; (None, None) when there is none."""
        if self.local:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
                mtime = os.stat(self.path).st_mtime
            except FileNotFoundError:
                return None, None
            try:
                return json.loads(data), None
            except (
                ValueError
            ):  # being written right now (create, then write): alive, as of its mtime
                return {
                    "pid": None,
                    "host": None,
                    "heartbeat_at": mtime,
                    "started_at": mtime,
                    "token": None,
                }, None
        try:
            self.fs.invalidate_cache(self.path)
            info = self.fs.info(self.path)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), info.get("ETag")
        except ValueError:
            return {"heartbeat_at": 0, "started_at": 0, "token": None}, info.get("ETag")

    def _create(self) -> bool:
        """Create the lease if there is none; True when we did."""
        body = self._body()
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        try:
            self.fs.pipe_file(self.path, body, mode="create")
        except FileExistsError:
            return False
        self._etag = self._current_etag()
        return True

    def _current_etag(self) -> str | None:
        self.fs.invalidate_cache(self.path)
        try:
            return self.fs.info(self.path).get("ETag")
        except FileNotFoundError:
            return None

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if holder["pid"] != os.getpid() and not _pid_alive(holder["pid"]):
                return True
        return time.time() - float(holder.get("heartbeat_at", 0)) > float(
            holder.get("timeout_s") or self.timeout_s
        )

    def _take_over(self, holder: dict[str, Any], etag: str | None) -> bool:
        """Replace the stale lease `holder` by ours, atomically; True when we now hold it."""
        if self.local:
            aside = f"{self.path}.stale-{self.token}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return self._create()
            try:
                with open(aside, "rb") as f:
                    moved = json.loads(f.read())
            except ValueError:
                moved = {}
            if moved.get("token") != holder.get(
                "token"
            ):  # not the stale one: a new holder's; put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                os.unlink(aside)
                return False
            os.unlink(aside)
            return self._create()
        try:
            self.fs.pipe_file(self.path, self._body(), IfMatch=etag)
        except (FileExistsError, OSError):  # 412: someone else took it over first
            return False
        self._etag = self._current_etag()
        return True

    # ------------------------------------------------------------ use
    def try_acquire(self) -> dict[str, Any] | None:
        """None when this run now holds the lease, else the live holder's record."""
        if not (self.local or self.remote):
            self.held = True
            return None
        for _ in range(
            5
        ):  # the lease can vanish or change between our calls; a few rounds settle it
            if self._create():
                self._start()
                return None
            holder, etag = self._read()
            if holder is None:
                continue
            if not self._stale(holder):
                return holder
            log.warning("stage %s: taking over a stale lease (%s)", self.stage, describe(holder))
            if self._take_over(holder, etag):
                self._start()
                return None
        holder, _ = self._read()
        return holder or {
            "pid": None,
            "host": None,
            "heartbeat_at": time.time(),
            "started_at": time.time(),
        }

    def confirm(self) -> None:
        """Raise LeaseLost unless this run still holds the lease (before each paid request)."""
        if not self.held or not (self.local or self.remote):
            return
        if self.lost:
            raise self._lost_error(None)
        stalled = time.time() - self._confirmed_at
        if stalled < self.timeout_s / 2:
            return  # beaten recently: nobody takes a lease over before the timeout
        holder, _ = self._read()
        if holder is None or holder.get("token") != self.token:
            self.lost = True
            self._stop.set()
            raise self._lost_error(holder, stalled)
        self._heartbeat()  # still ours after a stall: tell the others at once

    def _lost_error(self, holder: dict[str, Any] | None, stalled: float | None = None) -> LeaseLost:
        now = f"now held by {describe(holder)}" if holder else "released since"
        why = (
            f"no heartbeat for {stalled:.0f}s (more than store.lease_timeout_s={self.timeout_s:g}: "
            "a stopped or suspended process?)"
            if stalled is not None
            else "its heartbeat found it taken"
        )
        return LeaseLost(
            f"stage {self.stage}: this run lost its lease on the work ({why}); another run took it "
            f"over ({now}). Stopped before sending another paid request"
        )

    def _start(self) -> None:
        self.held = True
        # in the caller's context: a warning it logs ("lost the lease") belongs to the caller's
        # run (Prefect finds the run in context variables, which a new thread does not inherit)
        self._confirmed_at = time.time()
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._beat,),
            name=f"sgpo-lease-{self.stage}",
            daemon=True,
        )
        self._thread.start()

    def _beat(self) -> None:
        every = max(0.05, self.timeout_s / 4)
        while not self._stop.wait(every):
            try:
                self._heartbeat()
            except (
                Exception
            ) as e:  # a missed heartbeat is not fatal; a stale lease costs a repeat at worst
                log.warning("stage %s: lease heartbeat failed: %s", self.stage, e)

    def _heartbeat(self) -> None:
        if self.local:
            holder, _ = self._read()
            if holder is None or holder.get("token") != self.token:
                self._mark_lost()
                return
            tmp = f"{self.path}.beat-{self.token}"
            with open(tmp, "wb") as f:
                f.write(self._body())
            os.replace(tmp, self.path)
            self._confirmed_at = time.time()
            return
        try:
            self.fs.pipe_file(self.path, self._body(), IfMatch=self._etag)
        except (FileExistsError, OSError):
            self._mark_lost()
            return
        self._etag = self._current_etag()
        self._confirmed_at = time.time()

    def _mark_lost(self) -> None:
        log.warning(
            "stage %s: lost the lease (taken over as stale); this run sends no more paid requests",
            self.stage,
        )
        self.lost = True
        self._stop.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.held or not (self.local or self.remote):
            return
        self.held = False
        try:
            holder, _ = self._read()
            if holder is not None and holder.get("token") == self.token:
                if self.local:
                    os.unlink(self.path)
                else:
                    self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass
        except Exception as e:  # a lease left behind goes stale; nothing is lost
            log.warning("stage %s: could not release the lease %s: %s", self.stage, self.path, e)


def acquire_or_wait(
    lease: Lease,
    *,
    on_busy: str,
    poll_s: float,
    finished: Callable[[], Any],
    logger: logging.Logger | None = None,
) -> tuple[Any, bool]:
    """(None, waited) once `lease` is held; (artifact, True) when, while we waited, the holder finished
    it (`finished()` returns the artifact or None). `on_busy == "fail"`: StageBusy at once."""
    logger = logger or log
    waited, last_log = False, 0.0
    while True:
        holder = lease.try_acquire()
        if holder is None:
            return None, waited
        if on_busy == "fail":
            raise StageBusy(
                f"stage {lease.stage}: another run is computing this stage for the same inputs and config "
                f"(key {lease.key[:16]}): {describe(holder)}; lease {lease.path}. store.on_busy=fail: failing "
                "at once (store.on_busy=wait waits for it and reuses its artifact)"
            )
        if time.monotonic() - last_log > 60 or not waited:
            logger.warning(
                "stage %s: waiting for another run computing it (%s); its artifact will be reused",
                lease.stage,
                describe(holder),
            )
            last_log = time.monotonic()
        waited = True
        time.sleep(poll_s)
        if (ref := finished()) is not None:
            return ref, True
