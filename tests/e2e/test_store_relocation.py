"""A finished store copied to another folder, or uploaded to S3, with the original gone: every stage
is cached there and every artifact reference points into the new store (issue 12, item 8).

One tiny pipeline run (module fixture); the store is the only cache (no Prefect cache records),
and its manifests hold the old absolute URIs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sgpo.config import load_config


def _cfg(store_url: str, workdir: Path, *extra: str):
    return load_config(
        "tiny",
        [
            f"store.url={store_url}",
            "tracking.enabled=false",
            "data.po.max_rows=8",
            f"tracking.mlflow_uri=sqlite:///{workdir}/mlflow.db",
            *extra,
        ],
    )


# a full run of its own (55 s); a store read where it is now: test_stage_input_uri.py, test_store_is_the_cache.py
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished store, moved: the original folder no longer exists."""
    from flows.pipeline import sgpo_pipeline

    work = tmp_path_factory.mktemp("reloc")
    first = sgpo_pipeline(config=_cfg(str(work / "orig"), work))
    assert {s.status for s in first.stages} == {"ran"}
    assert not (work / "orig" / "_prefect").exists()  # the store is the only cache
    shutil.copytree(work / "orig", work / "copy")
    shutil.move(str(work / "orig"), str(work / "moved-away"))  # the old paths are gone
    return work, first


def _assert_all_cached_here(report, first, store_url: str) -> None:
    assert [s.stage for s in report.stages] == [s.stage for s in first.stages]
    assert {s.stage: s.status for s in report.stages} == {s.stage: "cached" for s in first.stages}
    for s in report.stages:
        if not s.uri.startswith("hf://"):
            assert s.uri.startswith(store_url + "/"), s.uri
    assert report.final_policy.startswith(store_url + "/dpo/")
    hashes = {s.stage: s.content_hash for s in first.stages}
    assert {s.stage: s.content_hash for s in report.stages} == hashes
    assert report.judge.get("report_uri", "").startswith(store_url + "/judge/")


def test_a_copied_folder_store_is_cached_where_it_is_now(finished):
    from flows.pipeline import sgpo_pipeline

    work, first = finished
    report = sgpo_pipeline(config=_cfg(str(work / "copy"), work))
    _assert_all_cached_here(report, first, f"file://{work / 'copy'}")
    assert not (work / "orig").exists()


def test_a_store_uploaded_to_s3_is_cached_there(finished, s3_endpoint, monkeypatch):
    import s3fs

    from flows.pipeline import sgpo_pipeline

    work, first = finished
    monkeypatch.setenv(
        "SGPO_CACHE_DIR", str(work / "s3-cache")
    )  # models are downloaded from the bucket
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(work / "moved-away") + "/", "sgpo-test/reloc/", recursive=True)
    opts = json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}})
    report = sgpo_pipeline(
        config=_cfg("s3://sgpo-test/reloc", work, f"store.storage_options={opts}")
    )
    _assert_all_cached_here(report, first, "s3://sgpo-test/reloc")
