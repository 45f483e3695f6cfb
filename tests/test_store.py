"""Artifact store: publish/find round trips, manifest-last atomicity, S3 through moto."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from artifacts.store import ArtifactStore, MANIFEST


def _publish(store: ArtifactStore, key: str = "k" * 64):
    table = pa.table({"prompt": ["a", "b"], "reference": ["x", "y"]})
    return store.publish_table("demo", key, table, manifest={"stage": "demo", "parents": {}}, summary={"n": 2})


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
    ref = store.publish_model("m", "c" * 64, d, manifest={})
    assert json.loads((tmp_path / "store" / "m" / ("c" * 16) / MANIFEST).read_text())["files"]


def test_s3_round_trip_through_moto(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SGPO_CACHE_DIR", str(tmp_path / "cache"))
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    store = ArtifactStore("s3://sgpo-test/unit", opts)
    ref = _publish(store)
    assert ref.uri == f"s3://sgpo-test/unit/demo/{ref.cache_key[:16]}"
    again = ArtifactStore("s3://sgpo-test/unit", opts)
    assert again.find("demo", "k" * 64) == ref
    assert again.read_table(ref).num_rows == 2
    # models are fetched once into the local cache
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\1" * 16)
    (d / "config.json").write_text("{}")
    mref = store.publish_model("m", "d" * 64, d, manifest={})
    local = again.model_dir(mref)
    assert (tmp_path / "cache") in __import__("pathlib").Path(local).parents
    assert open(f"{local}/model.safetensors", "rb").read() == b"\1" * 16
