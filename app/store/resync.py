"""Resync: send every prospect's delivered state to Outreach again.

For when Outreach was edited by hand: what we last confirmed is no longer what it holds, so
no-op skipping must not be trusted. The work is ``lua/resync.lua``, atomic per batch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import cast

import redis

from app.core.errors import store_error
from app.core.keys import Keys
from app.core.operations import run_sync
from app.core.wake import wake
from app.store.prospects import SCRIPTS

#: Prospects per script call: bounds how long one script holds Redis.
RESYNC_BATCH = 200


def _delivered_prospects(client: redis.Redis, keys: Keys, dest: str) -> Iterator[list[int]]:
    """Batches of the prospects that have a delivered hash."""
    # The key layout stays in Keys: take a real key and cut off its prospect id.
    base = keys.delivered(dest, 0)[: -len("0")]
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", base) + "*"
    batch: list[int] = []
    for key in client.scan_iter(match=pattern, count=1000, _type="hash"):
        tail = cast("bytes", key).decode()[len(base) :]
        if tail.isdigit():
            batch.append(int(tail))
        if len(batch) >= RESYNC_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _script_keys(keys: Keys, dest: str, batch: list[int]) -> list[str]:
    kk = [keys.due(dest), keys.leases(dest), keys.first_seen(dest), keys.counters(dest)]
    for p in batch:
        kk += [keys.delivered(dest, p), keys.pending(dest, p), keys.inflight(dest, p)]
    return kk


def resync(
    client: redis.Redis,
    keys: Keys,
    destination: str,
    *,
    window_ms: int,
    now_ms: int | None = None,
) -> int:
    """Put every delivered value of ``destination`` back as pending and schedule its prospects.

    Pending and in-flight values are newer and are kept. Prospects in flight are not
    scheduled here; their ack schedules them. Returns the prospects that will be sent again.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    script = SCRIPTS.sync(client, "resync")
    total = 0
    try:
        for batch in _delivered_prospects(client, keys, destination):
            kk = _script_keys(keys, destination, batch)
            scheduled, _ = script(keys=kk, args=[now, window_ms, *batch])
            total += int(scheduled)
        if total:
            run_sync(client, wake(keys, destination))
    except redis.RedisError as exc:
        raise store_error(exc) from exc
    return total
