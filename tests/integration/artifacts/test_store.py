"""The artifact store on the S3 protocol (moto's server on loopback): round trips, a truncated
object detected, and the store check naming a missing bucket. On a local folder:
tests/unit/artifacts/test_store.py."""

from __future__ import annotations

import pyarrow as pa
import pytest

from artifacts.store import ArtifactStore, CorruptArtifactError, StoreError, check_store


def _publish(store: ArtifactStore, key: str = "k" * 64):
    table = pa.table({"prompt": ["a", "b"], "reference": ["x", "y"]})
    return store.publish_table(
        "demo", key, table, manifest={"stage": "demo", "parents": {}}, summary={"n": 2}
    )


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


def test_s3_truncated_object_is_detected(s3_endpoint, tmp_path):
    import boto3

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    store = ArtifactStore("s3://sgpo-test/integrity", opts)
    ref = _publish(store)
    key = f"integrity/demo/{ref.cache_key[:16]}/data.parquet"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    body = s3.get_object(Bucket="sgpo-test", Key=key)["Body"].read()
    s3.put_object(Bucket="sgpo-test", Key=key, Body=body[: len(body) - 7])
    fresh = ArtifactStore("s3://sgpo-test/integrity", opts)
    assert fresh.find("demo", "k" * 64) is None
    with pytest.raises(
        CorruptArtifactError, match=f"artifact {ref.uri}: data.parquet does not match"
    ):
        fresh.read_table(ref)


def test_check_store_s3_good_and_missing_bucket(s3_endpoint):
    import boto3

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    check_store("s3://sgpo-test/checked", opts)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    left = s3.list_objects_v2(Bucket="sgpo-test", Prefix="checked/").get("KeyCount", 0)
    assert left == 0
    with pytest.raises(StoreError) as e:
        check_store("s3://sgpo-no-such-bucket/x", opts)
    assert "s3://sgpo-no-such-bucket/x" in str(e.value) and "no such bucket" in str(e.value)
    with pytest.raises(StoreError, match="s3://sgpo-test/x: .*cannot be reached"):
        check_store(
            "s3://sgpo-test/x",
            {
                "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"},
                "config_kwargs": {"retries": {"max_attempts": 1}},
            },
        )
