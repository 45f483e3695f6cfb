"""The unit tier's contract, enforced: a unit test checks pure functions (files under tmp_path are
fine) and starts nothing. It asks for no model or S3 server fixture, builds or loads no transformers
model, listens on no socket, starts no Python process and calls no Prefect flow or task; each is a
failure naming the tier the test belongs to (docs/usage.md, Tests). A library's own helper process
(`uname`, `file`, `fc-list`) is not the test's and is let through.

The model check patches transformers' model class only where it is already imported when the test
starts (importing it here would cost every unit run torch's import): a test that imports it itself
and builds a model is caught once another test has imported it, so in a whole-tier run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _refuse(what: str):
    def refuse(*args, **kwargs):
        pytest.fail(
            f"a unit test {what}: move it to tests/integration/ (or tests/e2e/)", pytrace=False
        )

    return refuse


def _is_python(args) -> bool:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else (list(args) or [""])[0]
    name = Path(os.fsdecode(first).split()[0] if first else "").name
    return name.startswith("python") or os.fsdecode(first) == sys.executable


# tests/conftest.py's session fixtures, overridden here: they fail before building anything (a
# session fixture is set up before any function fixture, so a check in the one below comes too late)
@pytest.fixture(scope="session")
def tiny_model_dir():
    _refuse("asks for tiny_model_dir (the tiny model, built once per session)")()


@pytest.fixture(scope="session")
def s3_endpoint():
    _refuse("asks for s3_endpoint (moto's S3 server)")()


@pytest.fixture(autouse=True)
def _unit_tier_starts_nothing(monkeypatch):
    monkeypatch.setattr(socket.socket, "listen", _refuse("starts a server (a socket listens)"))
    popen_init = subprocess.Popen.__init__

    def popen(self, args, *a, **k):
        if _is_python(args):
            _refuse(f"starts a Python process ({args!r})")()
        popen_init(self, args, *a, **k)  # a library's own helper (uname, file) is fine

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    if "prefect" in sys.modules:
        from prefect.flows import Flow
        from prefect.tasks import Task

        monkeypatch.setattr(Flow, "__call__", _refuse("runs a Prefect flow"))
        monkeypatch.setattr(Task, "__call__", _refuse("runs a Prefect task"))
        monkeypatch.setattr(Task, "submit", _refuse("runs a Prefect task"))
    modeling = sys.modules.get("transformers.modeling_utils")  # checked, never imported, here
    if modeling is not None:
        monkeypatch.setattr(
            modeling.PreTrainedModel, "__init__", _refuse("builds or loads a model")
        )
