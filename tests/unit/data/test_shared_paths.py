"""`shared:NAME`: a data file of the offline reference data folder ($SGPO_SHARED_DATA, else
../shared/data beside the repository), for presets that read official benchmark files the project
does not ship (eval-smol's MT-Bench and IFEval)."""

from __future__ import annotations

import pytest

from sgpo.config import DatasetSpec
from sgpo.data.sources import (
    BUNDLED_DIR,
    DatasetError,
    local_path,
    resolve_data_path,
    source_fingerprint,
)


def test_a_shared_file_resolves_in_the_reference_folder(tmp_path, monkeypatch):
    (tmp_path / "mt_bench").mkdir()
    f = tmp_path / "mt_bench" / "question.jsonl"
    f.write_text('{"question_id": 1, "turns": ["a", "b"]}\n')
    monkeypatch.setenv("SGPO_SHARED_DATA", str(tmp_path))
    spec = DatasetSpec(path="shared:mt_bench/question.jsonl")
    assert local_path(spec) == f == resolve_data_path("shared:mt_bench/question.jsonl")
    assert "file_sha256" in source_fingerprint(spec)  # identified by content, like any local file


def test_a_missing_shared_file_or_folder_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SGPO_SHARED_DATA", str(tmp_path))
    with pytest.raises(
        DatasetError, match=r"reference data folder .* has no such file .*SGPO_SHARED_DATA"
    ):
        local_path(DatasetSpec(path="shared:ifeval/input_data.jsonl"))
    monkeypatch.setenv("SGPO_SHARED_DATA", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match=r"absent does not exist"):
        resolve_data_path("shared:ifeval/input_data.jsonl")


def test_other_paths_resolve_as_before(tmp_path):
    assert resolve_data_path("bundled:tiny/eval.jsonl") == BUNDLED_DIR / "tiny" / "eval.jsonl"
    assert resolve_data_path(str(tmp_path / "x.jsonl")) == tmp_path / "x.jsonl"
