"""Content hashes and cache keys.

A stage's cache key is `sha256(stage, code version, its config without runtime fields, its
prompt versions, the content hashes of its inputs)`. No run id goes in, so a new run of the
same config (UI, schedule or CLI) reuses every finished stage, and a change in one stage's
config changes its key and, through its output's content hash, the keys downstream.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

HASH_PREFIX_LEN = 16  # folder names use a prefix; manifests keep the full hash
LARGE_FILE_BYTES = 256 * 2**20
EDGE_BYTES = 8 * 2**20


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_fingerprint(source: str) -> str:
    """sha256 of a Python module's code: its syntax tree without docstrings, so reformatting it or
    editing a comment or docstring leaves the fingerprint (and the cache keys that hold it) alone."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return sha256_text(ast.dump(tree, annotate_fields=False))


def stage_cache_key(
    stage: str,
    *,
    code_version: str,
    config: dict[str, Any],
    inputs: dict[str, str],
    prompts: dict[str, str] | None = None,
) -> str:
    """`inputs` maps input names to content hashes, `prompts` names to prompt versions."""
    payload = {
        "stage": stage,
        "code_version": code_version,
        "config": config,
        "inputs": inputs,
        "prompts": prompts or {},
    }
    return sha256_text(canonical_json(payload))


def dir_content_hash(path: Path) -> str:
    """Content hash of a local checkpoint dir: every file's sha256 (files over 256 MiB: size + first and
    last 8 MiB, so a 15 GB checkpoint is not read in full on every run)."""
    entries = {}
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h = hashlib.sha256()
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size <= LARGE_FILE_BYTES:
                for chunk in iter(lambda: f.read(2**20), b""):
                    h.update(chunk)
            else:
                h.update(str(size).encode())
                h.update(f.read(EDGE_BYTES))
                f.seek(size - EDGE_BYTES)
                h.update(f.read(EDGE_BYTES))
        entries[p.relative_to(path).as_posix()] = h.hexdigest()
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
