"""The deployments' Custom-run form: every field of the pipeline and evaluation flows' parameter
schema (what Prefect's UI renders) has a description, and none renders as junk."""

from __future__ import annotations

import re

import pytest

# The UI renders descriptions as Markdown/HTML: `<stage>` is an HTML tag and vanishes ('<stage>/<prefix>' showed as '/-').
TAG = re.compile(r"<[A-Za-z/][^>]*>")


def problems(schema: dict) -> list[str]:
    out = []

    def check(where: str, desc: str | None, required: bool) -> None:
        if required and not (desc or "").strip():
            out.append(f"{where}: no description")
        elif desc and TAG.search(desc):
            out.append(f"{where}: {desc!r} has HTML-like text the form drops")
        elif desc and len(re.sub(r"[\W_]", "", desc)) < 3:
            out.append(f"{where}: {desc!r} is not a description")

    for name, d in {"<flow>": schema, **(schema.get("definitions") or {})}.items():
        if name != "<flow>":
            check(name, d.get("description"), False)
        for prop, v in (d.get("properties") or {}).items():
            check(f"{name}.{prop}", v.get("description"), True)
    return out


@pytest.fixture(params=["pipeline", "evaluate"])
def flow_schema(request) -> dict:
    from prefect.utilities.callables import parameter_schema

    if request.param == "pipeline":
        from flows.pipeline import sgpo_pipeline as fl
    else:
        from flows.evaluate import evaluate as fl
    return parameter_schema(fl).model_dump_for_openapi()


def test_every_form_field_has_a_description(flow_schema):
    assert set(flow_schema["properties"]) == {"config", "force"}
    assert len(flow_schema.get("definitions") or {}) > 5  # the config sections are there to check
    assert problems(flow_schema) == []


def test_the_check_catches_missing_and_junk():
    schema = {
        "properties": {"config": {"description": "ok text"}, "force": {}},
        "definitions": {
            "A": {
                "description": "named '<stage>/<prefix>-<stage>'",
                "properties": {"x": {"description": "'/-'"}, "y": {"description": "fine"}},
            }
        },
    }
    assert problems(schema) == [
        "<flow>.force: no description",
        "A: \"named '<stage>/<prefix>-<stage>'\" has HTML-like text the form drops",
        "A.x: \"'/-'\" is not a description",
    ]
