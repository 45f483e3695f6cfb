"""The artifact store: Parquet tables and safetensors checkpoints under one fsspec URL.

Layout: `{root}/{stage}/{cache_key[:16]}/` holds `data.parquet` (tables) or `model/` (models)
and `manifest.json`. The manifest is written LAST and is the only mark of a finished
artifact: a stage killed mid-write leaves files without a manifest, which nothing reads
and the next attempt overwrites. Works the same on a local folder and on S3 (where a single
PUT is atomic, so the manifest appears whole or not at all).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from artifacts.hashing import HASH_PREFIX_LEN, canonical_json, sha256_bytes, sha256_text
from artifacts.refs import TABLE_SCHEMA_VERSION, ArtifactRef

MANIFEST = "manifest.json"
TABLE_FILE = "data.parquet"
MODEL_DIR = "model"
LINEAGE_PACKAGES = ("sgpo", "torch", "transformers", "trl", "datasets", "accelerate", "prefect", "pyarrow", "vllm")


def normalize_url(url: str) -> str:
    """Plain and relative paths become absolute file:// URLs (cache records must not depend on cwd)."""
    if "://" in url:
        if url.startswith("file://"):
            return "file://" + str(Path(url[len("file://"):]).expanduser().resolve())
        return url.rstrip("/")
    return "file://" + str(Path(url).expanduser().resolve())


def library_versions() -> dict[str, str]:
    out = {}
    for name in LINEAGE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def local_cache_dir() -> Path:
    return Path(os.environ.get("SGPO_CACHE_DIR", Path.home() / ".cache" / "sgpo"))


class ArtifactStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = normalize_url(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = self.url.startswith("file://")

    # ---------------------------------------------------------------- locations
    def artifact_url(self, stage: str, cache_key: str) -> str:
        return f"{self.url}/{stage}/{cache_key[:HASH_PREFIX_LEN]}"

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def work_url(self, stage: str, cache_key: str) -> str:
        """Scratch space of an unfinished stage (e.g. the paid-call journal); kept after publish for audit."""
        return f"{self.artifact_url(stage, cache_key)}/_work"

    # ---------------------------------------------------------------- reading
    def find(self, stage: str, cache_key: str) -> ArtifactRef | None:
        """The finished artifact for this key, if a manifest says so."""
        path = f"{self._path(self.artifact_url(stage, cache_key))}/{MANIFEST}"
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            manifest = json.loads(f.read())
        if manifest.get("cache_key") != cache_key:  # prefix collision: treat as absent
            return None
        return ArtifactRef.model_validate(manifest["ref"])

    def read_manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        with self.fs.open(f"{self._path(ref.uri)}/{MANIFEST}", "rb") as f:
            return json.loads(f.read())

    def read_table(self, ref: ArtifactRef) -> pa.Table:
        if ref.kind != "table":
            raise TypeError(f"{ref.uri} is a {ref.kind}, not a table")
        with self.fs.open(f"{self._path(ref.uri)}/{TABLE_FILE}", "rb") as f:
            return pq.read_table(io.BytesIO(f.read()))

    def model_dir(self, ref: ArtifactRef) -> str:
        """A local directory holding the checkpoint (downloaded once for remote stores), or a hub id."""
        if ref.kind == "hub_model":
            return ref.uri.removeprefix("hf://")
        if ref.kind != "model":
            raise TypeError(f"{ref.uri} is a {ref.kind}, not a model")
        remote = f"{self._path(ref.uri)}/{MODEL_DIR}"
        if self.is_local:
            return remote
        target = local_cache_dir() / "models" / ref.content_hash
        if not (target / ".complete").exists():
            tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
            self.fs.get(remote + "/", str(tmp), recursive=True)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(target)
            (target / ".complete").touch()
        return str(target)

    # ---------------------------------------------------------------- writing
    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            # write-then-rename: a reader never sees half a file
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "wb") as f:
                f.write(data)

    def _publish(self, base: str, ref: ArtifactRef, manifest: dict[str, Any]) -> ArtifactRef:
        manifest = {
            **manifest,
            "ref": ref.model_dump(mode="json"),
            "cache_key": ref.cache_key,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "library_versions": library_versions(),
        }
        self._write_bytes(f"{base}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode())
        return ref

    def publish_table(
        self,
        stage: str,
        cache_key: str,
        table: pa.Table,
        *,
        manifest: dict[str, Any],
        summary: dict[str, Any] | None = None,
        produced_by: str | None = None,
    ) -> ArtifactRef:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        uri = self.artifact_url(stage, cache_key)
        base = self._path(uri)
        self._write_bytes(f"{base}/{TABLE_FILE}", data)
        ref = ArtifactRef(
            uri=uri, kind="table", stage=stage, cache_key=cache_key, content_hash=sha256_bytes(data),
            rows=table.num_rows, schema_version=TABLE_SCHEMA_VERSION, produced_by=produced_by,
            summary=summary or {},
        )
        return self._publish(base, ref, {**manifest, "columns": table.column_names})

    def publish_model(
        self,
        stage: str,
        cache_key: str,
        local_dir: str | Path,
        *,
        manifest: dict[str, Any],
        summary: dict[str, Any] | None = None,
        produced_by: str | None = None,
    ) -> ArtifactRef:
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        if not any(p.suffix == ".safetensors" for p in files):
            raise ValueError(f"{local_dir} holds no .safetensors weights; refusing to publish")
        if any(p.suffix in (".bin", ".pt", ".pkl", ".pickle") for p in files):
            raise ValueError(f"{local_dir} holds pickle-based files; only safetensors checkpoints are stored")
        uri = self.artifact_url(stage, cache_key)
        base = self._path(uri)
        hashes = {}
        for p in files:
            rel = p.relative_to(local_dir).as_posix()
            data = p.read_bytes()
            hashes[rel] = sha256_bytes(data)
            self._write_bytes(f"{base}/{MODEL_DIR}/{rel}", data)
        ref = ArtifactRef(
            uri=uri, kind="model", stage=stage, cache_key=cache_key,
            content_hash=sha256_text(canonical_json(hashes)), produced_by=produced_by, summary=summary or {},
        )
        return self._publish(base, ref, {**manifest, "files": hashes})

    def publish_json(self, stage: str, cache_key: str, name: str, obj: Any) -> str:
        """A side file (e.g. a report) beside an artifact; returns its URL."""
        uri = f"{self.artifact_url(stage, cache_key)}/{name}"
        self._write_bytes(self._path(uri), json.dumps(obj, indent=2, default=str).encode())
        return uri


def read_ref(uri: str, storage_options: dict[str, Any] | None = None) -> ArtifactRef:
    """The ArtifactRef of a finished artifact from its folder URI (read from its manifest)."""
    url = normalize_url(uri)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = f"{root.rstrip('/')}/{MANIFEST}"
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} is not a finished artifact (no {MANIFEST} in it)")
    with fs.open(path, "rb") as f:
        return ArtifactRef.model_validate(json.loads(f.read())["ref"])


def local_model_ref(path: str | Path) -> ArtifactRef:
    """A model in a local checkpoint dir outside the store: referenced by its content hash."""
    from artifacts.hashing import dir_content_hash

    local = Path(path).expanduser().resolve()
    digest = dir_content_hash(local)
    return ArtifactRef(uri=f"hf://{local}", kind="hub_model", stage="model", cache_key=digest, content_hash=digest,
                       summary={"local_dir": str(local)})


def hub_model_ref(name_or_path: str, revision: str | None) -> ArtifactRef:
    """A base model that stays on the hub (or a local dir): referenced, not copied into the store."""
    ident = canonical_json({"model": name_or_path, "revision": revision})
    return ArtifactRef(
        uri=f"hf://{name_or_path}", kind="hub_model", stage="base_model", cache_key=sha256_text(ident),
        content_hash=sha256_text(ident), summary={"revision": revision},
    )
