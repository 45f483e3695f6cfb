"""Artifact store on a local folder: publish/find round trips, manifest-last atomicity, damage caught
by sizes and hashes, the store check. S3 through moto: tests/integration/artifacts/test_store.py."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from artifacts.store import MANIFEST, ArtifactStore


def _publish(store: ArtifactStore, key: str = "k" * 64):
    table = pa.table({"prompt": ["a", "b"], "reference": ["x", "y"]})
    return store.publish_table(
        "demo", key, table, manifest={"stage": "demo", "parents": {}}, summary={"n": 2}
    )


def test_table_round_trip_and_manifest(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = _publish(store)
    assert ref.rows == 2 and ref.kind == "table" and ref.uri.startswith("file://")
    assert store.read_table(ref).column("prompt").to_pylist() == ["a", "b"]
    found = store.find("demo", "k" * 64)
    assert found == ref
    manifest = store.read_manifest(ref)
    assert manifest["stage"] == "demo" and "pyarrow" in manifest["library_versions"]
    assert manifest["ref"]["content_hash"] == ref.content_hash


def test_same_content_same_hash(tmp_path):
    a = _publish(ArtifactStore(str(tmp_path / "a")))
    b = _publish(ArtifactStore(str(tmp_path / "b")))
    assert a.content_hash == b.content_hash


def test_data_without_manifest_is_not_finished(tmp_path):
    """A stage killed after writing its data but before its manifest leaves nothing that looks finished."""
    store = ArtifactStore(str(tmp_path / "store"))
    ref = _publish(store)
    (tmp_path / "store" / "demo" / ref.cache_key[:16] / MANIFEST).unlink()
    assert store.find("demo", "k" * 64) is None


def test_prefix_collision_is_not_a_hit(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    _publish(store, "a" * 64)
    assert store.find("demo", "a" * 16 + "b" * 48) is None


def test_model_publish_refuses_pickles(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\0" * 8)
    (d / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        store.publish_model("m", "c" * 64, d, manifest={})
    (d / "training_args.bin").unlink()
    store.publish_model("m", "c" * 64, d, manifest={})
    assert json.loads((tmp_path / "store" / "m" / ("c" * 16) / MANIFEST).read_text())["files"]


# --------------------------------------------------------------------------- integrity (issue 12, finding 6)

import hashlib  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from artifacts.store import CorruptArtifactError, StoreError, check_store  # noqa: E402


def _table_file(tmp_path, ref) -> Path:
    return tmp_path / "store" / "demo" / ref.cache_key[:16] / "data.parquet"


def test_manifest_records_sizes_and_hashes_stay_as_before(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = _publish(store)
    data = _table_file(tmp_path, ref).read_bytes()
    manifest = store.read_manifest(ref)
    assert manifest["data_bytes"] == len(data)
    assert (
        ref.content_hash == hashlib.sha256(data).hexdigest()
    )  # the content hash is still sha256 of the bytes

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\1" * 40)
    (d / "config.json").write_text('{"a": 1}')
    mref = store.publish_model("m", "c" * 64, d, manifest={})
    mman = store.read_manifest(mref)
    assert mman["file_bytes"] == {"config.json": 8, "model.safetensors": 40}
    file_hashes = {
        "config.json": hashlib.sha256(b'{"a": 1}').hexdigest(),
        "model.safetensors": hashlib.sha256(b"\1" * 40).hexdigest(),
    }
    assert mman["files"] == file_hashes
    assert (
        mref.content_hash
        == hashlib.sha256(
            json.dumps(file_hashes, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    )


def test_a_truncated_table_is_absent_for_find_and_an_error_for_read(tmp_path, caplog):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = _publish(store)
    path = _table_file(tmp_path, ref)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # a real truncation, as a full disk or a killed copy leaves it
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="artifacts.store"):
        assert store.find("demo", "k" * 64) is None
    assert (
        ref.uri in caplog.text
        and f"has {size // 2} bytes, the manifest records {size}" in caplog.text
    )
    with pytest.raises(CorruptArtifactError) as e:
        store.read_table(ref)
    msg = str(e.value)
    assert (
        ref.uri in msg
        and "sha256" in msg
        and f"{size // 2} bytes, the manifest records {size}" in msg
    )
    # publishing again (what the recomputed stage does) repairs it
    assert (
        _publish(store) == ref
        and store.find("demo", "k" * 64) == ref
        and store.read_table(ref).num_rows == 2
    )


def test_same_size_corruption_is_caught_by_the_hash(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = _publish(store)
    path = _table_file(tmp_path, ref)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.find("demo", "k" * 64) is None  # sizes agree; a local lookup checks content too
    with pytest.raises(CorruptArtifactError, match="does not match its manifest: sha256"):
        store.read_table(ref)


def test_a_missing_data_file_and_an_old_manifest(tmp_path, caplog):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = _publish(store)
    path = _table_file(tmp_path, ref)
    # a manifest from before sizes were recorded still finds (nothing to compare) ...
    mpath = path.parent / MANIFEST
    manifest = json.loads(mpath.read_text())
    del manifest["data_bytes"]
    mpath.write_text(json.dumps(manifest))
    assert store.find("demo", "k" * 64) == ref
    path.unlink()
    # ... and a missing file is still an error on read
    with pytest.raises(CorruptArtifactError, match="data.parquet is missing"):
        store.read_table(ref)
    manifest["data_bytes"] = 10
    mpath.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="artifacts.store"):
        assert store.find("demo", "k" * 64) is None
    assert "data.parquet is missing" in caplog.text


def test_a_damaged_model_is_absent_and_model_dir_refuses_it(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\1" * 64)
    (d / "config.json").write_text("{}")
    ref = store.publish_model("m", "c" * 64, d, manifest={})
    folder = Path(store.model_dir(ref))
    assert store.find("m", "c" * 64) == ref
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(10)
    assert store.find("m", "c" * 64) is None
    with pytest.raises(CorruptArtifactError) as e:
        store.model_dir(ref)
    assert ref.uri in str(
        e.value
    ) and "model/model.safetensors has 10 bytes, the manifest records 64" in str(e.value)
    (folder / "config.json").unlink()
    with pytest.raises(CorruptArtifactError, match="model/config.json is missing"):
        store.model_dir(ref)


# --------------------------------------------------------------------------- check_store (finding 10)


def test_check_store_rejects_unknown_schemes():
    with pytest.raises(StoreError) as e:
        check_store("ftp://example.com/store")
    assert "ftp://" in str(e.value) and "file://" in str(e.value) and "s3://" in str(e.value)


def test_check_store_local_writable_and_not(tmp_path):
    check_store(str(tmp_path / "new" / "store"))  # created on demand
    assert list((tmp_path / "new" / "store" / "_probe").iterdir()) == []  # the probe is removed
    blocker = tmp_path / "x" / "file.txt"
    blocker.parent.mkdir()
    blocker.write_text("a file, so nothing can be created under it, even by root")
    bad = blocker / "store"
    with pytest.raises(StoreError) as e:
        check_store(str(bad))
    assert f"file://{bad}" in str(e.value) and "not writable" in str(e.value)


def test_check_store_names_rejected_credentials():
    from botocore.exceptions import ClientError

    from artifacts.store import _s3_cause

    err = PermissionError("Forbidden")
    err.__cause__ = ClientError(
        {"Error": {"Code": "InvalidAccessKeyId", "Message": "The key does not exist"}}, "PutObject"
    )
    assert _s3_cause(err).startswith("credentials rejected")
    assert _s3_cause(PermissionError("Access Denied")).startswith("access denied")


def _checkpoint(folder, weights: bytes = b"w" * 1000):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return folder


def test_a_local_publish_links_the_checkpoint_and_marks_it_verified(tmp_path, monkeypatch):
    """Same filesystem: the weights are hard-linked (not read into memory and written again), and the
    hash computed while publishing is remembered, so the first lookup does not hash them again."""
    import hashlib

    import artifacts.integrity as integrity

    monkeypatch.setenv("SGPO_CACHE_DIR", str(tmp_path / "cache"))
    src = _checkpoint(tmp_path / "scratch")
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.publish_model("m", "c" * 64, src, manifest={})
    stored = tmp_path / "store" / "m" / ("c" * 16) / "model" / "model.safetensors"
    assert stored.stat().st_ino == (src / "model.safetensors").stat().st_ino
    files = store.read_manifest(ref)["files"]
    assert files["model.safetensors"] == hashlib.sha256(b"w" * 1000).hexdigest()
    assert not list(stored.parent.glob("*.tmp-*"))

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(integrity, "file_sha256", no_hashing)
    assert store.find("m", "c" * 64) == ref


def test_a_publish_across_filesystems_copies(tmp_path, monkeypatch):
    """os.link fails across devices (EXDEV): the file is copied, with the same manifest."""
    import errno
    import os

    def cross_device(src, dst, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    src = _checkpoint(tmp_path / "scratch")
    a = ArtifactStore(str(tmp_path / "a")).publish_model("m", "c" * 64, src, manifest={})
    stored = tmp_path / "a" / "m" / ("c" * 16) / "model" / "model.safetensors"
    assert stored.read_bytes() == b"w" * 1000
    assert stored.stat().st_ino != (src / "model.safetensors").stat().st_ino
    monkeypatch.undo()
    b = ArtifactStore(str(tmp_path / "b")).publish_model("m", "c" * 64, src, manifest={})
    assert a.content_hash == b.content_hash
