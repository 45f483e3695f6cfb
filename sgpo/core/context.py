"""What a stage run needs besides its own config: the store, tracking, the run's id, `force`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from artifacts.refs import ArtifactRef
from artifacts.store import ArtifactStore
from sgpo.config import StoreConfig
from sgpo.core.tracking import TrackingHandle


class StageContext(BaseModel):
    """Infrastructure a stage needs besides its own config (JSON-serialisable, crosses processes)."""

    model_config = ConfigDict(extra="forbid")

    store: StoreConfig
    tracking: TrackingHandle | None = None
    run_id: str | None = None
    trust_remote_code: bool = False
    refresh: bool = False  # `force`: recompute even if the store holds a finished artifact

    def reuse(self, store: ArtifactStore, stage: str, key: str) -> ArtifactRef | None:
        return None if self.refresh else store.find(stage, key)

    def open_store(self) -> ArtifactStore:
        return ArtifactStore(self.store.url, self.store.storage_options)
