"""An input given by URI is read where the URI points (issue 24, item 2): a copied or moved store's
manifests still name the folder the artifact was made in."""

from __future__ import annotations

import shutil

import pyarrow as pa

from artifacts.store import ArtifactStore, read_ref


def _published(tmp_path):
    store = ArtifactStore(str(tmp_path / "orig"))
    report = store.publish_json("judge", "k" * 64, "report.json", {"ok": True})
    ref = store.publish_table(
        "judge",
        "k" * 64,
        pa.table({"x": [1, 2, 3]}),
        manifest={},
        summary={"report_uri": report, "note": "kept"},
    )
    return store, ref


def test_a_copied_artifact_is_read_where_it_was_pointed_at(tmp_path):
    store, ref = _published(tmp_path)
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    shutil.move(tmp_path / "orig", tmp_path / "gone")

    copy = ArtifactStore(str(tmp_path / "copy"))
    here = f"{copy.url}/judge/{'k' * 16}"
    got = read_ref(str(tmp_path / "copy" / "judge" / ("k" * 16)))
    assert got.uri == here
    assert got.summary == {"report_uri": f"{here}/report.json", "note": "kept"}
    assert got.content_hash == ref.content_hash and got.cache_key == ref.cache_key
    assert copy.read_table(got).column("x").to_pylist() == [1, 2, 3]


def test_a_ref_read_where_it_was_made_is_unchanged(tmp_path):
    store, ref = _published(tmp_path)
    assert read_ref(ref.uri) == ref
    assert read_ref(str(tmp_path / "orig" / "judge" / ("k" * 16)) + "/") == ref
