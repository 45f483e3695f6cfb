"""The journal of finished calls: an append-only JSONL file locally, one object per record elsewhere."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from sgpo.llm.client.records import CallRecord

log = logging.getLogger(__name__)


class Journal(Protocol):
    """Records by key (`request_hash`, or `batch_key` for batch submissions); a later one wins."""

    def load(self) -> dict[str, CallRecord]: ...
    def load_all(self) -> dict[str, CallRecord]: ...
    def append(self, record: CallRecord) -> None: ...
    def close(self) -> None: ...


def _parse_record(data: bytes | str, where: str, model: type[BaseModel] = CallRecord) -> Any:
    try:
        return model.model_validate_json(data)
    except ValidationError:
        log.warning(
            "journal %s: skipping an unreadable record (a write cut short by a crash?)", where
        )
        return None


def without_pending(records: dict[str, Any]) -> dict[str, Any]:
    """The finished records: "pending" ones are paid re-asks still due, not answers."""
    return {k: r for k, r in records.items() if getattr(r, "status", None) != "pending"}


class LocalJournal:
    """Append-only JSONL file. A crash can only tear the last line, which loading skips; before
    appending after such a crash we end that line, so the torn bytes never glue onto a new record."""

    def __init__(
        self, path: str | Path, *, model: type[BaseModel] = CallRecord, key: str = "request_hash"
    ):
        self.path = Path(path)
        self.model, self.key = model, key  # what a line holds and which field identifies it
        self._fd: int | None = None
        self._lock = threading.Lock()  # appends come from worker threads

    def load(self) -> dict[str, CallRecord]:
        """Finished records by request hash (a later line for the same hash wins)."""
        return without_pending(self.load_all())

    def load_all(self) -> dict[str, Any]:
        """Every record, "pending" ones included."""
        if not self.path.exists():
            return {}
        out: dict[str, Any] = {}
        for line in self.path.read_bytes().split(b"\n"):
            if (
                line.strip()
                and (rec := _parse_record(line, str(self.path), self.model)) is not None
            ):
                out[getattr(rec, self.key)] = rec
        return out

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")
            self._fd = fd
        return self._fd

    def append(self, record: BaseModel) -> None:
        data = (record.model_dump_json() + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            view = memoryview(data)
            while view:  # one write in practice; loop only in case the kernel writes less
                view = view[os.write(fd, view) :]
            os.fsync(
                fd
            )  # survive a machine loss too, not just a killed process; cheap next to a paid call

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class ObjectStoreJournal:
    """One JSON object per record under a prefix (s3://bucket/run/journal/...)."""

    def __init__(
        self, fs: Any, root: str, *, model: type[BaseModel] = CallRecord, key: str = "request_hash"
    ):
        self.fs, self.root = fs, root.rstrip("/")
        self.model, self.key = model, key

    def load(self) -> dict[str, CallRecord]:
        """Finished records by request hash."""
        return without_pending(self.load_all())

    def load_all(self) -> dict[str, Any]:
        """Every record, "pending" ones included (one object per hash: the latest write)."""
        try:
            self.fs.invalidate_cache(
                self.root
            )  # fsspec caches listings; another run may have written since
            paths = [p for p in self.fs.find(self.root) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        if not paths:
            return {}
        out: dict[str, Any] = {}
        for path, data in self.fs.cat(paths, on_error="omit").items():
            if (rec := _parse_record(data, path, self.model)) is not None:
                out[getattr(rec, self.key)] = rec
        return out

    def append(self, record: BaseModel) -> None:
        self.fs.pipe_file(
            f"{self.root}/{getattr(record, self.key)}.json",
            record.model_dump_json().encode("utf-8"),
        )

    def close(self) -> None:
        pass


def locate(journal_url: str, storage_options: dict | None = None) -> tuple[Any, str, bool]:
    """(filesystem, path, whether it is local) of a journal URL."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(journal_url, **(storage_options or {}))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return fs, root, "file" in protocols or "local" in protocols


def open_journal(journal_url: str, storage_options: dict | None = None) -> Journal:
    """The call journal at `journal_url`: one JSONL file locally, a prefix of objects elsewhere."""
    fs, root, local = locate(journal_url, storage_options)
    if local:
        if Path(root).is_dir():
            raise ValueError(
                f"journal_url {journal_url!r} is a directory; a local journal is one file (e.g. .../calls.jsonl)"
            )
        return LocalJournal(root)
    return ObjectStoreJournal(fs, root)
