"""The base of every config section: strict pydantic models, the mark of runtime-only fields, and
what the rest of the project does with a section (its cache payload, a stage's part of it, a
section by its dotted path in a recipe).

Fields marked `runtime_field(...)` change how a stage runs (URLs, concurrency, batch sizes,
timeouts) but not what it produces; they are left out of cache keys, so e.g. a new port for
the embedded LLM server does not invalidate finished annotation. Each one is proven so by
tests/integration/test_runtime_fields.py (two runs, equal content; training numerics within a
stated tolerance), which fails for a new runtime field until it has its proof.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

NOT_IN_CACHE_KEY = "not_in_cache_key"
KEY_WHEN_SET = (
    "in_cache_key_when_set"  # in the key only when not at its default (old keys stay valid)
)


def runtime_field(default: Any = None, description: str = "", **kw: Any) -> Any:
    """A field that does not change a stage's output, hence is not part of its cache key."""
    if "default_factory" in kw:
        return Field(description=description, json_schema_extra={NOT_IN_CACHE_KEY: True}, **kw)
    return Field(default, description=description, json_schema_extra={NOT_IN_CACHE_KEY: True}, **kw)


def key_field_when_set(default: Any, description: str = "", **kw: Any) -> Any:
    """A field that changes the output, added after artifacts were made: at its default it is left out of
    the cache key (so existing keys stay valid); set, it is part of the key like any other field."""
    return Field(default, description=description, json_schema_extra={KEY_WHEN_SET: True}, **kw)


def optional_field(description: str = "", **kw: Any) -> Any:
    """An opt-in setting (default None) that changes the output when set: in the cache key only when set."""
    return key_field_when_set(None, description, **kw)


def is_runtime_field(field: Any) -> bool:
    """A field that changes how a stage runs, not what it makes: marked `runtime_field`, or a
    section all of whose fields are (e.g. `store`, `execution`, a training stage's `launch`)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get(NOT_IN_CACHE_KEY):
        return True
    models = [
        t
        for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
        if isinstance(t, type) and issubclass(t, BaseModel)
    ]
    return bool(models) and all(
        m.model_fields and all(is_runtime_field(f) for f in m.model_fields.values()) for m in models
    )


def form_layout(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """How a section shows in Prefect's run form (its UI renders the flows' parameter schema): each
    field labelled with its own name, the one `key=value` overrides and `--params` use, and placed
    (the form sorts by `position`) with the settings that change results first, then the runtime
    ones, labelled "(runtime)": connection, batch and hardware settings, which are not in a stage's
    cache key (whole runtime sections such as `store` and `execution` come last in the form)."""
    props = schema.get("properties") or {}
    fields = model.model_fields
    names = [n for n in props if n in fields]
    runtime = {n for n in names if is_runtime_field(fields[n])}
    if runtime == set(names):  # a runtime section: its own label says so
        runtime = set()
    for position, name in enumerate(
        [n for n in names if n not in runtime] + [n for n in names if n in runtime]
    ):
        props[name]["title"] = f"{name} (runtime)" if name in runtime else name
        props[name]["position"] = position


def _takes_numbers_not_bools(annotation: Any) -> bool:
    """int / float / `int | None` ...: a field where a boolean can only be a mistake."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    return bool({int, float} & set(args)) and bool not in args


class Checked(BaseModel):
    """Numbers are numbers: no infinity or NaN where a float is expected (`epochs=.inf` would
    train forever, `timeout_s=.inf` never time out), no boolean where a count is (`rounds=true`
    is not 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            if _takes_numbers_not_bools(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"a number is expected here, not the boolean {str(value).lower()}")
        return value


class Section(Checked):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, json_schema_extra=form_layout
    )


SectionT = TypeVar("SectionT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


def project(section: BaseModel, model: type[SectionT]) -> SectionT:
    """The part of `section` that `model` declares (e.g. the generate stage's fields of a benchmark's section)."""
    return model.model_validate({k: getattr(section, k) for k in model.model_fields})


def cache_payload(section: BaseModel) -> dict[str, Any]:
    """The section as JSON-able data without its runtime-only fields (what a cache key hashes)."""
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get(NOT_IN_CACHE_KEY):
            continue
        value = getattr(section, name)
        if extra.get(KEY_WHEN_SET) and value == field.default:
            continue
        out[name] = (
            cache_payload(value)
            if isinstance(value, BaseModel)
            else json.loads(json.dumps(value, default=str))
        )
    return out


def section_of(recipe: Any, path: str) -> Any:
    """`sft`, `data.po`, `pairwise.imp_vs_b` (a list item by its `name`) -> the section object."""
    node = recipe
    for part in path.split("."):
        if isinstance(node, list):
            match = [x for x in node if getattr(x, "name", None) == part]
            if not match:
                names = [getattr(x, "name", None) for x in node]
                raise KeyError(f"no item named {part!r} in {path}; names: {names}")
            node = match[0]
        elif hasattr(node, part):
            node = getattr(node, part)
        else:
            raise KeyError(f"{path}: {type(node).__name__} has no section {part!r}")
    return node
