"""In-process producers: ``Producer().send("demo", profiles)`` validates and records them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.core.errors import UnknownDestination
from app.core.redis_client import sync_client
from app.core.settings import Settings, get_settings
from app.ingest.batch import Batch, ingest_sync
from app.store.registry import destination_sync

__all__ = ["Producer", "UnknownDestination"]


class Producer:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis = sync_client(self.settings)

    def send(self, destination_id: str, profiles: Iterable[Any], *, start: int = 0) -> Batch:
        """Validate ``profiles`` and merge their changes; bad ones are reported, not raised."""
        dest = destination_sync(self.redis, self.settings.keys, destination_id)
        if dest is None:
            raise UnknownDestination(destination_id)
        return ingest_sync(
            self.redis,
            self.settings.keys,
            dest,
            profiles,
            window_ms=self.settings.coalesce_window_ms,
            start=start,
        )

    def close(self) -> None:
        self.redis.close()
