"""The artifact store: Parquet tables and safetensors checkpoints under one fsspec URL.

Layout: `{root}/{stage}/{cache_key[:16]}/` holds `data.parquet` (tables) or `model/` (models)
and `manifest.json`. The manifest is written LAST and is the only mark of a finished
artifact: a stage killed mid-write leaves files without a manifest, which nothing reads
and the next attempt overwrites. Works the same on a local folder and on S3 (where a single
PUT is atomic, so the manifest appears whole or not at all).

Integrity (artifacts.integrity): the manifest records the data's size (`data_bytes` for tables,
`file_bytes` per file for models) and sha256 (the table's content hash, `files` per model file).
`lookup` / `find` treat an artifact whose data is missing, has another size or (local stores) other
content as absent, and say why, so the stage is recomputed; a local artifact's files are hashed
once per machine and remembered by their identity on disk. `read_table` checks the bytes it reads
against the content hash and `model_dir` a checkpoint's files against their hashes before a stage
consumes them, and raise `CorruptArtifactError` naming the artifact and what differs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from artifacts.hashing import HASH_PREFIX_LEN, canonical_json, sha256_bytes, sha256_text
from artifacts.integrity import (
    file_sha256,
    local_cache_dir,
    local_file_problems,
    remember_verified,
)
from artifacts.refs import TABLE_SCHEMA_VERSION, ArtifactRef

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TABLE_FILE = "data.parquet"
MODEL_DIR = "model"
LINEAGE_PACKAGES = (
    "sgpo",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "accelerate",
    "prefect",
    "pyarrow",
    "vllm",
)


def normalize_url(url: str) -> str:
    """Plain and relative paths become absolute file:// URLs (cache records must not depend on cwd)."""
    if "://" in url:
        if url.startswith("file://"):
            return "file://" + str(Path(url[len("file://") :]).expanduser().resolve())
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


class StoreError(RuntimeError):
    """The store cannot be used (unknown scheme, no such bucket, credentials rejected, read-only)."""


class CorruptArtifactError(StoreError):
    """A published artifact whose data no longer matches its manifest (truncated, edited, missing)."""


def _data_problems(fs: Any, base: str, manifest: dict[str, Any]) -> list[str]:
    """What differs between the files under `base` and the sizes the manifest records ([] = all fine).

    Manifests written before sizes were recorded have nothing to compare and pass."""
    expected: dict[str, int] = {}
    found: dict[str, int | None] = {}
    fs.invalidate_cache(base)  # s3fs caches listings; the question is what is there now
    if isinstance(manifest.get("data_bytes"), int):
        expected[TABLE_FILE] = manifest["data_bytes"]
        try:
            found[TABLE_FILE] = fs.info(f"{base}/{TABLE_FILE}").get("size")
        except FileNotFoundError:
            pass
    if manifest.get("file_bytes"):
        expected.update(
            {f"{MODEL_DIR}/{rel}": size for rel, size in manifest["file_bytes"].items()}
        )
        try:  # only model/: _work/ beside it may hold thousands of journal objects
            listing = fs.find(f"{base}/{MODEL_DIR}", detail=True)
        except FileNotFoundError:
            listing = {}
        found.update({p[len(base) + 1 :]: info.get("size") for p, info in listing.items()})
    problems = []
    for rel, size in sorted(expected.items()):
        if rel not in found:
            problems.append(f"{rel} is missing")
        elif found[rel] != size:
            problems.append(f"{rel} has {found[rel]} bytes, the manifest records {size}")
    return problems


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
        """The finished, checked artifact for this key (see `lookup`), or None."""
        return self.lookup(stage, cache_key)[0]

    def lookup(self, stage: str, cache_key: str) -> tuple[ArtifactRef | None, list[str]]:
        """(the finished artifact for this key, []) once its manifest is found and its data checked:
        every file there with its recorded size, and on a local store its recorded content. A damaged
        artifact is absent, not an error (the stage runs again and overwrites it): (None, what is
        wrong with it). No manifest: (None, [])."""
        url = self.artifact_url(stage, cache_key)
        path = f"{self._path(url)}/{MANIFEST}"
        try:
            with self.fs.open(path, "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            return None, []
        except ValueError:
            problems = [f"{MANIFEST} is not valid JSON"]
            log.warning("artifact %s is damaged (%s); recomputing it", url, problems[0])
            return None, problems
        if manifest.get("cache_key") != cache_key:  # prefix collision: treat as absent
            return None, []
        ref = self._rebase(ArtifactRef.model_validate(manifest["ref"]), stage, cache_key)
        problems = _data_problems(self.fs, self._path(ref.uri), manifest)
        if not problems and self.is_local:
            problems = self._content_problems(ref, manifest)
        if problems:
            log.warning(
                "artifact %s is damaged (%s); treating it as absent, so it is recomputed",
                ref.uri,
                "; ".join(problems),
            )
            return None, problems
        return ref, []

    def _content_problems(
        self, ref: ArtifactRef, manifest: dict[str, Any], *, trust_marks: bool = True
    ) -> list[str]:
        """A local artifact's files against the sha256 its manifest records."""
        base = Path(self._path(ref.uri))
        if ref.kind == "table":
            return local_file_problems(
                base, {TABLE_FILE: ref.content_hash}, trust_marks=trust_marks
            )
        if ref.kind == "model":
            problems = local_file_problems(
                base / MODEL_DIR,
                manifest.get("files") or {},
                manifest.get("file_bytes"),
                trust_marks=trust_marks,
            )
            return [f"{MODEL_DIR}/{p}" for p in problems]
        return []

    def _rebase(self, ref: ArtifactRef, stage: str, cache_key: str) -> ArtifactRef:
        """The ref as found HERE: a store copied or moved elsewhere (another folder, a bucket) keeps
        manifests naming the old location; the artifact is where we found it, and so are its side
        files (summary values under the old folder, e.g. `report_uri`)."""
        return located_at(ref, self.artifact_url(stage, cache_key))

    def holds(self, ref: ArtifactRef) -> bool:
        """Whether `ref` points into this store (a ref from a copied store's old location does not)."""
        return ref.uri == self.url or ref.uri.startswith(self.url + "/")

    def read_manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        with self.fs.open(f"{self._path(ref.uri)}/{MANIFEST}", "rb") as f:
            return json.loads(f.read())

    def read_table(self, ref: ArtifactRef) -> pa.Table:
        if ref.kind != "table":
            raise TypeError(f"{ref.uri} is a {ref.kind}, not a table")
        path = f"{self._path(ref.uri)}/{TABLE_FILE}"
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CorruptArtifactError(
                f"artifact {ref.uri}: {TABLE_FILE} is missing (its manifest exists)"
            ) from None
        got = sha256_bytes(data)
        if got != ref.content_hash:
            try:
                recorded = self.read_manifest(ref).get("data_bytes")
            except (OSError, ValueError):
                recorded = None
            size = f"{len(data)} bytes" + (
                f", the manifest records {recorded}" if recorded is not None else ""
            )
            raise CorruptArtifactError(
                f"artifact {ref.uri}: {TABLE_FILE} does not match its manifest: sha256 {got[:16]}... "
                f"instead of {ref.content_hash[:16]}... ({size}); delete the artifact folder to recompute it"
            )
        return pq.read_table(io.BytesIO(data))

    def model_dir(self, ref: ArtifactRef) -> str:
        """A local directory holding the checkpoint (downloaded once for remote stores), or a hub id."""
        if ref.kind == "hub_model":
            return ref.uri.removeprefix("hf://")
        if ref.kind == "local_model":
            return local_model_dir(ref)
        if ref.kind != "model":
            raise TypeError(f"{ref.uri} is a {ref.kind}, not a model")
        remote = f"{self._path(ref.uri)}/{MODEL_DIR}"
        if self.is_local:
            self._check_model_files(ref, Path(remote))
            return remote
        target = local_cache_dir() / "models" / ref.content_hash
        if (target / ".complete").exists():
            try:  # the local copy, checked at each use (a few stat calls once it was hashed)
                self._check_model_files(ref, target)
                return str(target)
            except CorruptArtifactError as e:
                log.warning("local copy of %s is damaged (%s); downloading it again", ref.uri, e)
        tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
        self.fs.get(remote + "/", str(tmp), recursive=True)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
        self._check_model_files(ref, target)  # what the store holds, as downloaded
        (target / ".complete").touch()
        return str(target)

    def _check_model_files(self, ref: ArtifactRef, folder: Path) -> None:
        """Every file the manifest lists is in `folder` with its recorded size and sha256 (hashed
        once per machine: artifacts.integrity), before a stage consumes the checkpoint."""
        manifest = self.read_manifest(ref)
        problems = [
            f"{MODEL_DIR}/{p}"
            for p in local_file_problems(
                folder, manifest.get("files") or {}, manifest.get("file_bytes")
            )
        ]
        if problems:
            raise CorruptArtifactError(
                f"artifact {ref.uri} does not match its manifest: {'; '.join(problems)}; "
                "delete the artifact folder to recompute it"
            )

    # ---------------------------------------------------------------- writing
    @staticmethod
    def _replace_local(path: str, fill: Callable[[str], None]) -> None:
        """Write-then-rename in a local store: `fill(tmp)` makes the file under a temporary name
        beside `path`; it is fsynced, then renamed into place, so a reader never sees half a file
        and a failure (a full disk, Ctrl-C) leaves no half-written one behind."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            # left by a killed attempt of this pid (a hard link needs the name free)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fill(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            self._replace_local(path, lambda tmp: Path(tmp).write_bytes(data))
        else:
            with self.fs.open(path, "wb") as f:
                f.write(data)

    @staticmethod
    def _place_local_file(src: Path, dest: str) -> tuple[str, int]:
        """(sha256, size) of `src`, placed at `dest` in a local store: hard-linked where the store
        shares the scratch folder's filesystem (a checkpoint is hashed in one streamed pass, not
        read into memory and written again: measured 1.3-4 s of a 517 MB stage), else copied;
        fsynced and renamed into place (`_replace_local`)."""

        def link_or_copy(tmp: str) -> None:
            try:
                os.link(src, tmp)
            except OSError:  # another filesystem (EXDEV) or one without hard links
                shutil.copyfile(src, tmp)

        digest, size = file_sha256(src), src.stat().st_size
        ArtifactStore._replace_local(dest, link_or_copy)
        return digest, size

    def _publish(self, base: str, ref: ArtifactRef, manifest: dict[str, Any]) -> ArtifactRef:
        manifest = {
            **manifest,
            "ref": ref.model_dump(mode="json"),
            "cache_key": ref.cache_key,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "library_versions": library_versions(),
        }
        self._write_bytes(
            f"{base}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode()
        )
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
            uri=uri,
            kind="table",
            stage=stage,
            cache_key=cache_key,
            content_hash=sha256_bytes(data),
            rows=table.num_rows,
            schema_version=TABLE_SCHEMA_VERSION,
            produced_by=produced_by,
            summary=summary or {},
        )
        return self._publish(
            base, ref, {**manifest, "columns": table.column_names, "data_bytes": len(data)}
        )

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
        """The safetensors checkpoint in `local_dir` as the artifact of (stage, cache_key). In a
        local store its files may be hard-linked, not copied: publish from a scratch folder that
        nothing writes to afterwards (every stage does)."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        if not any(p.suffix == ".safetensors" for p in files):
            raise ValueError(f"{local_dir} holds no .safetensors weights; refusing to publish")
        if any(p.suffix in (".bin", ".pt", ".pkl", ".pickle") for p in files):
            raise ValueError(
                f"{local_dir} holds pickle-based files; only safetensors checkpoints are stored"
            )
        uri = self.artifact_url(stage, cache_key)
        base = self._path(uri)
        hashes, sizes = {}, {}
        for p in files:
            rel = p.relative_to(local_dir).as_posix()
            if self.is_local:
                hashes[rel], sizes[rel] = self._place_local_file(p, f"{base}/{MODEL_DIR}/{rel}")
                continue
            data = p.read_bytes()
            hashes[rel] = sha256_bytes(data)
            sizes[rel] = len(data)
            self._write_bytes(f"{base}/{MODEL_DIR}/{rel}", data)
        if self.is_local:
            remember_verified(f"{base}/{MODEL_DIR}", hashes)
        ref = ArtifactRef(
            uri=uri,
            kind="model",
            stage=stage,
            cache_key=cache_key,
            content_hash=sha256_text(canonical_json(hashes)),
            produced_by=produced_by,
            summary=summary or {},
        )
        # sizes beside (not inside) `files`: the content hash stays the hash of `files` alone
        return self._publish(base, ref, {**manifest, "files": hashes, "file_bytes": sizes})

    def publish_json(self, stage: str, cache_key: str, name: str, obj: Any) -> str:
        """A side file (e.g. a report) beside an artifact; returns its URL."""
        uri = f"{self.artifact_url(stage, cache_key)}/{name}"
        self._write_bytes(self._path(uri), json.dumps(obj, indent=2, default=str).encode())
        return uri

    def publish_bytes(self, stage: str, cache_key: str, name: str, data: bytes) -> str:
        """A side file (e.g. an HTML report, a PNG) beside an artifact, before its manifest; returns its URL."""
        uri = f"{self.artifact_url(stage, cache_key)}/{name}"
        self._write_bytes(self._path(uri), data)
        return uri

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open(self._path(uri), "rb") as f:
            return f.read()


def located_at(ref: ArtifactRef, here: str) -> ArtifactRef:
    """`ref` as found at `here`: its URI, and summary values under its old folder (side files such
    as `report_uri`), moved there. The manifest names where the artifact was made."""
    old = ref.uri
    if old == here:
        return ref
    summary = {
        k: (
            here + v[len(old) :]
            if isinstance(v, str) and (v == old or v.startswith(old + "/"))
            else v
        )
        for k, v in ref.summary.items()
    }
    return ref.model_copy(update={"uri": here, "summary": summary})


def read_ref(uri: str, storage_options: dict[str, Any] | None = None) -> ArtifactRef:
    """The ArtifactRef of the finished artifact in folder `uri`, located where `uri` says: a copied
    or moved store's manifest still names the original folder, and an input is what the user
    pointed at, not wherever it was made."""
    url = normalize_url(uri)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = f"{root.rstrip('/')}/{MANIFEST}"
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} is not a finished artifact (no {MANIFEST} in it)")
    with fs.open(path, "rb") as f:
        ref = ArtifactRef.model_validate(json.loads(f.read())["ref"])
    return located_at(ref, url) if ref.kind in ("table", "model") else ref


def local_model_ref(
    path: str | Path, *, stage: str = "model", content_hash: str | None = None
) -> ArtifactRef:
    """A model in a local checkpoint folder outside the store: referenced where it is (a file://
    URI, so nothing asks a hub for it) and identified by its content (`content_hash`: the
    folder's `dir_content_hash`, computed here when not given)."""
    from artifacts.hashing import dir_content_hash

    local = Path(path).expanduser().resolve()
    digest = content_hash or dir_content_hash(local)
    return ArtifactRef(
        uri=f"file://{local}",
        kind="local_model",
        stage=stage,
        cache_key=digest,
        content_hash=digest,
        summary={"local_dir": str(local)},
    )


def local_model_dir(ref: ArtifactRef) -> str:
    """The folder of a local_model reference, which must still be there."""
    local = ref.uri.removeprefix("file://")
    if not Path(local).is_dir():
        raise FileNotFoundError(
            f"the local model folder {local} (content {ref.content_hash[:12]}) is gone: it is "
            "referenced where it is, not copied into the store"
        )
    return local


def hub_model_ref(name_or_path: str, revision: str | None) -> ArtifactRef:
    """A base model that stays on the hub: referenced by name and revision, not copied into the
    store (a local folder is a `local_model_ref`)."""
    ident = canonical_json({"model": name_or_path, "revision": revision})
    return ArtifactRef(
        uri=f"hf://{name_or_path}",
        kind="hub_model",
        stage="base_model",
        cache_key=sha256_text(ident),
        content_hash=sha256_text(ident),
        summary={"revision": revision},
    )


# --------------------------------------------------------------------------- checking a store up front

SUPPORTED_SCHEMES = ("file", "s3")
PROBE_DIR = "_probe"


def _s3_cause(err: BaseException) -> str:
    """The likely cause of an S3 failure, from the error code botocore/s3fs carry (or the message)."""
    text = f"{type(err).__name__}: {err}"
    for e in (err, err.__cause__, err.__context__):
        code = (
            getattr(e, "response", {}).get("Error", {}).get("Code")
            if hasattr(e, "response")
            else None
        )
        if code:
            text += f" [{code}]"
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return "no such bucket"
    if any(
        c in low
        for c in (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "invalidtoken",
            "expiredtoken",
            "unable to locate credentials",
            "nocredentials",
        )
    ):
        return "credentials rejected or missing (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
    if "accessdenied" in low or "forbidden" in low or isinstance(err, PermissionError):
        return "access denied: the credentials are not allowed to write there, or the bucket belongs to another account"
    if any(
        c in low
        for c in (
            "could not connect",
            "connect timeout",
            "endpointconnectionerror",
            "name or service",
        )
    ):
        return "the S3 endpoint cannot be reached (client_kwargs.endpoint_url, network)"
    return "unexpected error"


def check_store(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Raise StoreError unless the store at `url` is of a known kind, reachable and writable.

    Writes a small probe object under `{root}/_probe/`, reads it back and deletes it, so a run
    fails at its start, with the likely cause, instead of at its first publish after hours of work.
    Secrets in `storage_options` are never part of the message.
    """
    norm = normalize_url(url)
    scheme = norm.split("://", 1)[0]
    if scheme not in SUPPORTED_SCHEMES:
        raise StoreError(
            f"store URL {url!r}: scheme '{scheme}://' is not supported; supported: a folder or file://PATH, "
            "s3://BUCKET/PREFIX"
        )
    where = f"store {norm}"
    try:
        fs, root = fsspec.core.url_to_fs(norm, **(storage_options or {}))
    except ImportError as e:
        raise StoreError(f"{where}: the filesystem package is not installed ({e})") from None
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: bad storage_options ({e})") from None
    probe = f"{root.rstrip('/')}/{PROBE_DIR}/{uuid.uuid4().hex}.txt"
    payload = b"sgpo store probe\n"
    try:
        if scheme == "file":
            Path(probe).parent.mkdir(parents=True, exist_ok=True)
        fs.pipe_file(probe, payload)
        fs.invalidate_cache(probe)
        if fs.cat_file(probe) != payload:
            raise StoreError(f"{where}: a probe object read back differs from what was written")
        fs.rm_file(probe)
    except StoreError:
        raise
    except Exception as e:  # the cause is reported, never the storage options
        if scheme == "file":
            reason = (
                e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
            )
            raise StoreError(
                f"{where} is not writable: {reason} at {getattr(e, 'filename', None) or probe} (a read-only "
                "folder, or a path through a file)"
            ) from None
        bucket = root.split("/", 1)[0]
        raise StoreError(
            f"{where}: cannot write a probe object to bucket '{bucket}': {_s3_cause(e)} "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None
