"""Thin Celery tasks: each calls into ``app``."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from app.ingest.producer import Producer
from workers.celery_app import app
from workers.prometheus import record_drain
from workers.runtime import get_runtime


@app.task(name="outreach_sync.drain")
def drain(destination_id: str, slot: str | None = None) -> dict[str, int]:
    """Deliver the due prospects of one destination (started by the dispatcher)."""
    rt = get_runtime()
    started = time.perf_counter()
    stats: Counter[str] = Counter()
    try:
        rt.run(rt.deliverer.drain(destination_id, slot, stats=stats))
    finally:
        # A drain that raised is counted too, with what it did before.
        record_drain(destination_id, stats, time.perf_counter() - started)
    return dict(stats)


_producer: Producer | None = None


@app.task(name="outreach_sync.ingest")
def ingest(destination_id: str, profiles: list[Any]) -> dict[str, Any]:
    """For producers that already run Celery: ingest a batch of profiles."""
    global _producer
    if _producer is None:
        _producer = Producer()
    batch = _producer.send(destination_id, profiles)
    return batch.report.as_dict(results=batch.report.problems)
