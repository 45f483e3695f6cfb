"""Content checks of published artifacts: each file against the sha256 its manifest records.

Sizes are checked on every lookup (cheap, also on S3); content where it is cheap: a table's bytes
are hashed whenever they are read, and the files of a local artifact (a table's data, a model's
weights) are hashed at least once per machine before they are reused or consumed. A file hashed
once is remembered by its identity on disk (size, mtime, ctime, inode), so a lookup of a verified
15 GB checkpoint costs a few `stat` calls; a file changed in place, even to the same size, has a
new ctime and is hashed again. The marks live in the local cache folder (`SGPO_CACHE_DIR`), never
in the store, which may be read-only or shared by machines that each verify their own view.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MARKS_DIR = "verified"


def local_cache_dir() -> Path:
    return Path(os.environ.get("SGPO_CACHE_DIR", Path.home() / ".cache" / "sgpo"))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _marks_path(folder: Path) -> Path:
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return local_cache_dir() / MARKS_DIR / f"{digest}.json"


def _load_marks(folder: Path) -> dict[str, list]:
    try:
        marks = json.loads(_marks_path(folder).read_text())
    except (OSError, ValueError):
        return {}
    return marks if isinstance(marks, dict) else {}


def _save_marks(folder: Path, marks: dict[str, list]) -> None:
    path = _marks_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(marks))
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder: the next lookup hashes again, nothing is wrong
        pass


def remember_verified(folder: str | Path, hashes: dict[str, str]) -> None:
    """Mark files whose sha256 the caller has just computed (a publish) as verified, so the first
    lookup or read of a fresh checkpoint does not hash its weights again."""
    folder = Path(folder)
    marks = _load_marks(folder)
    for rel, digest in hashes.items():
        marks[rel] = [*_identity(folder / rel), digest]
    _save_marks(folder, marks)


def local_file_problems(
    folder: str | Path,
    hashes: dict[str, str],
    sizes: dict[str, int] | None = None,
    *,
    trust_marks: bool = True,
) -> list[str]:
    """What differs between the files under `folder` and the manifest's `hashes` (relative path ->
    sha256) and `sizes` ([] = all match). `trust_marks=False` hashes every file (`sgpo verify`)."""
    folder = Path(folder)
    sizes = sizes or {}
    marks = _load_marks(folder) if trust_marks else {}
    verified: dict[str, list] = {}
    problems = []
    for rel in sorted(set(hashes) | set(sizes)):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        ident = _identity(path)
        if rel in sizes and ident[0] != sizes[rel]:
            problems.append(f"{rel} has {ident[0]} bytes, the manifest records {sizes[rel]}")
            continue
        if rel not in hashes:
            continue
        if marks.get(rel) == [*ident, hashes[rel]]:
            verified[rel] = marks[rel]
            continue
        got = file_sha256(path)
        if got != hashes[rel]:
            problems.append(
                f"{rel} does not match its manifest: sha256 {got[:16]}... instead of "
                f"{hashes[rel][:16]}... (changed in place)"
            )
            continue
        verified[rel] = [*ident, hashes[rel]]
    if not problems:
        _save_marks(folder, verified)
    return problems
