"""Pending changes, delivered state and dead letters survive a Redis restart with AOF."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import redis
import redis.asyncio as aioredis

from app.core.keys import Keys
from app.store.prospects import ProspectStore, encode, merge_sync
from app.store.registry import publish_sync
from tests.support import LocalRedis, e2e_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


async def test_state_survives_a_crash_and_restart(local_redis: LocalRedis) -> None:
    keys, dest, now = Keys("os"), "d", int(time.time() * 1000)
    sync = redis.Redis.from_url(local_redis.url)
    publish_sync(sync, keys, e2e_config(dest))
    merge_sync(sync, keys, dest, {1: [("custom1", encode("realized"), 1)]}, now_ms=now, window_ms=0)
    merge_sync(sync, keys, dest, {2: [("custom2", encode("exited"), 1)]}, now_ms=now, window_ms=0)
    client = aioredis.from_url(local_redis.url)
    store = ProspectStore(client, keys)
    [claimed] = await store.claim(dest, now_ms=now, lease_ms=60_000, batch=1, token="t")
    await store.settle(
        dest, claimed.prospect, "t", "ok", now_ms=now, window_ms=0, fields=["custom1"]
    )
    await store.record_failure(dest, "9:1", {"id": "9:1", "reason": "http_404"})
    await client.aclose()
    sync.close()

    local_redis.kill()
    local_redis.start()

    client = aioredis.from_url(local_redis.url)
    store = ProspectStore(client, keys)
    later = now + 1000
    got = await store.claim(dest, now_ms=later, lease_ms=60_000, batch=10, token="t2")
    assert [(c.prospect, c.fields) for c in got] == [(2, {"custom2": "exited"})]  # pending kept
    delivered = await client.hgetall(keys.delivered(dest, 1))
    assert delivered == {b"custom1": encode("realized").encode()}  # no-op state kept
    failure = await client.hget(keys.failures(dest), "9:1")
    assert failure is not None and json.loads(failure)["reason"] == "http_404"
    await client.aclose()
