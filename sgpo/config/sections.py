"""The base of every config section: strict pydantic models, and the mark of runtime-only fields.

Its own module so that section models outside sgpo/config/pipeline.py (e.g. sgpo/config/sapo.py) can build
on it while sgpo/config/pipeline.py uses them, without an import circle.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
