"""A store that cannot work is one line and exit 2 before Prefect starts (issue 24, item 5): an
unknown scheme was rejected only by the flow, after the Prefect server's start (a minute or more
under load), and `sgpo stage` showed fsspec's traceback."""

from __future__ import annotations

import pytest

import sgpo.cli.main as cli


@pytest.fixture
def no_prefect(monkeypatch):
    def started(verbose: bool) -> None:
        raise AssertionError("Prefect was started before the store was checked")

    monkeypatch.setattr(cli, "_prepare_prefect", started)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "tiny", "store.url=gopher://host/store"],
        ["evaluate", "eval-tiny", "store.url=gopher://host/store"],
        ["stage", "prepare", "tiny", "--section", "data.po", "store.url=gopher://host/store"],
    ],
)
def test_an_unknown_store_scheme_fails_first(argv, no_prefect, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "sgpo: store URL 'gopher://host/store': scheme 'gopher://' is not supported"
    )
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unwritable_store_folder_fails_first(tmp_path, no_prefect, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["run", "tiny", f"store.url={blocker}/store"]) == 2
    assert "is not writable" in capsys.readouterr().err
