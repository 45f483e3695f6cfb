"""The server's request log: one JSON line per request, so tests can audit what was delivered."""

from __future__ import annotations

import json
import os
import time
import weakref
from pathlib import Path
from typing import Any


class RequestLog:
    """Append-only JSONL; one os.write per line on an O_APPEND fd, so lines never interleave."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        weakref.finalize(self, os.close, self._fd)  # closed with the app that owns it

    def write(self, entry: dict[str, Any]) -> None:
        """Append `entry`, stamped with the time (`ts`)."""
        line = json.dumps({"ts": time.time(), **entry}, sort_keys=True) + "\n"
        os.write(self._fd, line.encode("utf-8"))


def read_request_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a request log (for tests and audits)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
