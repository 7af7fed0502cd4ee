"""Thin Celery tasks: each calls into ``app``."""

from __future__ import annotations

from typing import Any

import redis

from app.ingest import ingest_sync
from app.registry import destination_sync
from app.settings import get_settings
from workers.celery_app import app
from workers.runtime import get_runtime


@app.task(name="outreach_sync.drain")
def drain(destination_id: str, slot: str | None = None) -> dict[str, int]:
    """Deliver the due prospects of one destination (started by the dispatcher)."""
    rt = get_runtime()
    return dict(rt.run(rt.deliverer.drain(destination_id, slot)))


_sync_redis: redis.Redis | None = None


@app.task(name="outreach_sync.ingest")
def ingest(destination_id: str, profiles: list[Any]) -> dict[str, Any]:
    """For producers that already run Celery: ingest a batch of profiles."""
    global _sync_redis
    s = get_settings()
    if _sync_redis is None:
        _sync_redis = redis.Redis.from_url(str(s.redis_url))
    dest = destination_sync(_sync_redis, s.keys, destination_id)
    if dest is None:
        raise LookupError(f"unknown destination {destination_id!r}")
    batch = ingest_sync(_sync_redis, s.keys, dest, profiles, window_ms=s.coalesce_window_ms)
    return batch.report.as_dict(results=batch.report.problems)
