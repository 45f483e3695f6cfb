"""The small references that cross task boundaries instead of data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TABLE_SCHEMA_VERSION = 1


class ArtifactRef(BaseModel):
    """Where a finished artifact lives and what it holds. Serialised as JSON by Prefect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(
        description="Folder of the artifact in the store (holds manifest.json); for a model outside "
        "the store: hf://ID (hub_model) or file:///PATH, its real location (local_model)"
    )
    kind: Literal["table", "model", "hub_model", "local_model"]
    stage: str
    cache_key: str
    content_hash: str = Field(
        description="sha256 of the data (tables) or of the file hashes (models)"
    )
    rows: int | None = None
    schema_version: int = TABLE_SCHEMA_VERSION
    produced_by: str | None = Field(
        None, description="Prefect flow-run id (or 'cli') that produced it"
    )
    summary: dict[str, Any] = Field(default_factory=dict, description="Small stage statistics")

    @property
    def short(self) -> str:
        return self.content_hash[:12]
