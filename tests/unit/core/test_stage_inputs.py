"""A stage alone takes its inputs by URI (sgpo.core.cli.input_ref): a finished artifact's folder, or
a local checkpoint folder, which base_model references where it is and prints as file:///PATH: the
URI it prints is an input the next stage accepts, with the same reference (by content)."""

from __future__ import annotations

import pytest

from artifacts.hashing import dir_content_hash
from artifacts.store import ArtifactStore, local_model_ref
from sgpo.core.cli import input_ref


def _checkpoint(folder):
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_local_checkpoint_folder_is_an_input_by_its_content(tmp_path):
    folder = _checkpoint(tmp_path / "model")
    printed = local_model_ref(folder, stage="base_model")  # what base_model prints for it
    for uri in (printed.uri, f"file://{folder}", str(folder)):
        ref = input_ref(uri)
        assert (ref.kind, ref.stage, ref.uri) == ("local_model", "base_model", printed.uri)
        assert ref.content_hash == ref.cache_key == dir_content_hash(folder)
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert input_ref(printed.uri).content_hash != printed.content_hash


def test_a_folder_that_is_neither_an_artifact_nor_a_checkpoint_still_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    for uri in (str(tmp_path / "empty"), f"file://{tmp_path / 'gone'}"):
        with pytest.raises(FileNotFoundError, match="not a finished artifact"):
            input_ref(uri)


def test_a_stored_artifact_is_read_from_its_manifest(tmp_path):
    import pyarrow as pa

    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.publish_table("prepare", "k" * 64, pa.Table.from_pylist([{"a": 1}]), manifest={})
    assert input_ref(ref.uri) == ref
