"""What Prefect's run form shows of a configuration (its UI renders the flows' parameter schema,
sorting each card's fields by `position`): each field under its own name, the one `key=value`
overrides and `--params` use; in every section the settings that change results first, then the
runtime ones, labelled "(runtime)"; whole runtime sections (store, tracking, ...) last."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from sgpo.config import cache_payload

RUNTIME = " (runtime)"


def _schema(flow: str) -> dict:
    from prefect.utilities.callables import parameter_schema

    if flow == "pipeline":
        from flows.pipeline import sgpo_pipeline as fl
    else:
        from flows.evaluate import evaluate as fl
    return parameter_schema(fl).model_dump_for_openapi()


def _models() -> dict[str, type[BaseModel]]:
    """Every config model by its schema name (pydantic's: the class name)."""
    import sgpo.config as config

    seen: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel]) -> None:
        if model.__name__ in seen:
            return
        seen[model.__name__] = model
        for f in model.model_fields.values():
            for t in (f.annotation, *getattr(f.annotation, "__args__", ())):
                for u in (t, *getattr(t, "__args__", ())):
                    if isinstance(u, type) and issubclass(u, BaseModel):
                        walk(u)

    walk(config.PipelineConfig)
    walk(config.EvaluationConfig)
    return seen


@pytest.mark.parametrize("flow", ["pipeline", "evaluate"])
def test_every_card_lists_result_settings_first_then_runtime_ones(flow):
    models = _models()
    checked = 0
    for name, d in _schema(flow)["definitions"].items():
        props = d.get("properties") or {}
        if name not in models or not props:
            continue
        ordered = sorted(props.items(), key=lambda kv: kv[1]["position"])
        titles = [p["title"] for _, p in ordered]
        assert [t.removesuffix(RUNTIME) for t in titles] == [k for k, _ in ordered], name
        runtime = [t.endswith(RUNTIME) for t in titles]
        assert runtime == sorted(runtime), f"{name}: a runtime field before a result one: {titles}"
        # "(runtime)" is what the cache key says: such a field is not in the section's key
        try:
            payload = cache_payload(models[name]())
        except Exception:  # a section without defaults for every field
            continue
        for key, is_runtime in zip([k for k, _ in ordered], runtime):
            if is_runtime:
                assert payload.get(key, {}) == {}, f"{name}.{key} is labelled runtime but keyed"
        checked += 1
    assert checked > 10


def test_the_run_form_starts_with_the_recipe_and_ends_with_the_runtime_sections():
    props = _schema("pipeline")["definitions"]["PipelineConfig"]["properties"]
    order = [k for k, _ in sorted(props.items(), key=lambda kv: kv[1]["position"])]
    assert order[:3] == ["name", "method", "algorithm"]
    assert set(order[-5:]) == {"store", "tracking", "embedded_llm", "execution", "hardware"}
    assert all(props[k]["title"] == f"{k}{RUNTIME}" for k in order[-5:])
    dpo = _schema("pipeline")["definitions"]["DPOStageConfig"]["properties"]
    assert dpo["beta"]["title"] == "beta"
    assert dpo["beta"]["position"] < dpo["per_device_batch_size"]["position"]
    assert dpo["per_device_batch_size"]["title"] == f"per_device_batch_size{RUNTIME}"
