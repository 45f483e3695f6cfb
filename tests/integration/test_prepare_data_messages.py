"""Data that cannot be used gets a message that names the problem (issue 24, item 6), through the
real stage CLI (`sgpo stage prepare`): an integer column was "none of its 20 rows has both a prompt
and a response"; a whitespace-only file `Instruction "train_sft" corresponds to no data!`; a 0-row
Parquet a `DatasetGenerationError` plus a stray logged error line; an empty reference was dropped
without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgpo.cli.main import main


def _prepare(tmp_path: Path, data: Path) -> int:
    return main(
        [
            "stage",
            "prepare",
            "tiny",
            "--section",
            "data.sft",
            f"data.sft.path={data}",
            f"store.url={tmp_path / 'store'}",
            "tracking.enabled=false",
        ]
    )


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_integer_column_is_named_with_its_type(tmp_path, capfd):
    data = _jsonl(tmp_path / "ints.jsonl", [{"prompt": i, "response": f"r{i}"} for i in range(20)])
    assert _prepare(tmp_path, data) == 1
    err = capfd.readouterr().err
    assert "none of its 20 rows has both a prompt and a response" in err
    assert "column 'prompt' holds int (20 of 20 rows), where text is needed" in err
    assert "'response'" not in err  # the usable column is not blamed


def test_a_column_of_blank_answers_is_named(tmp_path, capfd):
    data = _jsonl(
        tmp_path / "blank.jsonl", [{"prompt": f"p{i}", "response": " "} for i in range(3)]
    )
    assert _prepare(tmp_path, data) == 1
    assert (
        "column 'response' holds empty text (3 of 3 rows), where text is needed"
        in capfd.readouterr().err
    )


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("spaces.jsonl", "  \n\n \t\n", "holds only whitespace"),
        ("list.json", "[]", "has no rows"),
        ("header.csv", "prompt,response\n", "has no rows"),
    ],
)
def test_an_empty_text_file_is_called_empty(tmp_path, capfd, name, content, says):
    (tmp_path / name).write_text(content)
    assert _prepare(tmp_path, tmp_path / name) == 1
    err = capfd.readouterr().err
    assert f"dataset '{tmp_path / name}' (split 'train_sft') is empty (file " in err
    assert says in err and "corresponds to no data" not in err


def test_a_parquet_file_of_no_rows_is_called_empty_and_nothing_else_is_said(tmp_path, capfd):
    data = tmp_path / "zero.parquet"
    schema = pa.schema([("prompt", pa.string()), ("response", pa.string())])
    pq.write_table(pa.Table.from_pylist([], schema=schema), data)
    assert _prepare(tmp_path, data) == 1
    err = capfd.readouterr().err
    assert f"is empty (file {data} has no rows)" in err
    assert "DatasetGenerationError" not in err and "Failed to read file" not in err


def test_dropped_rows_are_counted_in_a_warning_and_the_summary(tmp_path, capfd, caplog):
    rows = [{"prompt": f"p{i}", "response": "" if i == 3 else f"r{i}"} for i in range(16)]
    assert _prepare(tmp_path, _jsonl(tmp_path / "one-empty.jsonl", rows)) == 0
    out, _ = capfd.readouterr()
    # a warning: sgpo's quiet console and the run's logs show those (sgpo.core.logs)
    assert [
        r.getMessage().split("): ", 1)[1]
        for r in caplog.records
        if r.levelname == "WARNING" and r.name.startswith("sgpo")
    ] == ["1 of 16 rows dropped (no prompt, or an empty response / reference)"]
    ref = json.loads(out.strip().splitlines()[-1])
    assert ref["rows"] == 15 and ref["summary"] == {"rows_read": 16, "rows_dropped": 1}
