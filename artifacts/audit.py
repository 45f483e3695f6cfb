"""Checking a whole store (`sgpo verify STORE`): every finished artifact's files against its
manifest, byte for byte, ignoring what earlier checks remembered."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from artifacts.hashing import HASH_PREFIX_LEN, canonical_json, sha256_text
from artifacts.integrity import local_file_problems
from artifacts.refs import ArtifactRef
from artifacts.store import MANIFEST, MODEL_DIR, TABLE_FILE, ArtifactStore, _data_problems


@dataclass
class ArtifactAudit:
    url: str  # the artifact's folder
    stage: str
    problems: list[str] = field(default_factory=list)
    finished: bool = True  # False: a folder without a manifest (a run that did not finish)


def _remote_sha256(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_problems(store: ArtifactStore, ref: ArtifactRef, manifest: dict) -> list[str]:
    base = store._path(ref.uri)
    if ref.kind == "table":
        expected = {TABLE_FILE: ref.content_hash}
    elif ref.kind == "model":
        files = manifest.get("files") or {}
        if sha256_text(canonical_json(files)) != ref.content_hash:
            return [f"{MANIFEST}: its file hashes do not give the recorded content hash"]
        expected = {f"{MODEL_DIR}/{rel}": digest for rel, digest in files.items()}
    else:  # a model referenced outside the store (hub, local folder): nothing stored to check
        return []
    if store.is_local:
        return local_file_problems(base, expected, trust_marks=False)
    problems = []
    for rel, digest in sorted(expected.items()):
        try:
            got = _remote_sha256(store.fs, f"{base}/{rel}")
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        if got != digest:
            problems.append(f"{rel} does not match its manifest: sha256 {got[:16]}...")
    return problems


def audit_artifact(store: ArtifactStore, stage: str, folder: str) -> ArtifactAudit:
    """One artifact folder (`{root}/{stage}/{key prefix}`, a path in the store's filesystem)."""
    url = f"{store.url}/{stage}/{Path(folder).name}"
    out = ArtifactAudit(url=url, stage=stage)
    try:
        with store.fs.open(f"{folder}/{MANIFEST}", "rb") as f:
            manifest = json.loads(f.read())
        ref = store._rebase(
            ArtifactRef.model_validate(manifest["ref"]), stage, manifest["cache_key"]
        )
    except FileNotFoundError:
        out.finished = False
        return out
    except (ValueError, KeyError, TypeError) as e:
        out.problems.append(f"{MANIFEST} cannot be read: {type(e).__name__}: {e}")
        return out
    if manifest["cache_key"][:HASH_PREFIX_LEN] != Path(folder).name or ref.stage != stage:
        out.problems.append(
            f"{MANIFEST} is for {ref.stage}/{manifest['cache_key'][:HASH_PREFIX_LEN]}, not this folder"
        )
        return out
    out.problems = _data_problems(store.fs, folder, manifest) or _content_problems(
        store, ref, manifest
    )
    return out


def audit_store(store: ArtifactStore) -> Iterator[ArtifactAudit]:
    """Every artifact folder of the store, in stage then key order."""
    root = store.root.rstrip("/")
    store.fs.invalidate_cache(root)
    try:
        stages = sorted(p for p in store.fs.ls(root, detail=False) if store.fs.isdir(p))
    except FileNotFoundError:
        return
    for stage_dir in stages:
        stage = Path(stage_dir).name
        if stage.startswith("_"):  # _prefect, _probe: not artifacts
            continue
        for folder in sorted(store.fs.ls(stage_dir, detail=False)):
            if store.fs.isdir(folder):
                yield audit_artifact(store, stage, folder.rstrip("/"))
