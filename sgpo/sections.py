"""The base of every config section: strict pydantic models, and the mark of runtime-only fields.

Its own module so that section models outside sgpo/config.py (e.g. sgpo/sapo/config.py) can build
on it while sgpo/config.py uses them, without an import circle.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NOT_IN_CACHE_KEY = "not_in_cache_key"


def runtime_field(default: Any = None, description: str = "", **kw: Any) -> Any:
    """A field that does not change a stage's output, hence is not part of its cache key."""
    if "default_factory" in kw:
        return Field(description=description, json_schema_extra={NOT_IN_CACHE_KEY: True}, **kw)
    return Field(default, description=description, json_schema_extra={NOT_IN_CACHE_KEY: True}, **kw)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
