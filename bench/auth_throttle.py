"""What the failed-authentication throttle costs a producer that authenticates: HTTP ingestion
with it against the same API without it, in the same run.

``python -m bench.auth_throttle [--requests N] [--pairs N]``: NDJSON batches of 50 profiles,
4 concurrent clients, a producer key; the throttle adds one Redis call per keyed request.
Prints profiles/s per pair and the ratio; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import web

from app.admin.producer_keys import ProducerKeys
from app.api.app import make_app
from app.api.throttle import throttle_failed_auth
from app.config.destinations import parse_config
from app.core.settings import Settings
from app.store.registry import publish_sync
from bench.wiring import BENCH_REDIS_URL

AUDIENCE = "aud-1"
CONFIG = {
    "connections": [{"id": "conn", "user": "bench", "access_token": "bench-token"}],
    "destinations": [
        {"id": "bench", "name": "Bench", "connection": "conn", "audiences": {AUDIENCE: 1}}
    ],
}


def _batch(size: int) -> bytes:
    member = {"status": "realized", "lastQualificationTime": "2026-11-20T13:15:49Z"}
    lines = (
        json.dumps(
            {
                "identityMap": {"OutreachId": [{"id": str(1000 + i)}]},
                "segmentMembership": {"ups": {AUDIENCE: member}},
            }
        )
        for i in range(size)
    )
    return "\n".join(lines).encode()


async def profiles_per_s(*, throttle: bool, requests: int) -> float:
    redis_url = BENCH_REDIS_URL
    settings = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        redis_key_prefix=f"bench{uuid.uuid4().hex[:8]}",
        admin_api_key="bench-auth-throttle-admin-key-0123",  # type: ignore[arg-type]
        producer_rate_limit="100000/second",
    )
    client = redis.Redis.from_url(redis_url)
    publish_sync(client, settings.keys, parse_config(CONFIG))
    pool = aioredis.from_url(redis_url)
    _, key = await ProducerKeys(pool, settings.keys).create("bench", ["bench"])
    await pool.aclose()
    app = make_app(settings)
    if not throttle:
        app.middlewares.remove(throttle_failed_auth)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/v1/destinations/bench/profiles"
    body, size = _batch(50), 50
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    try:
        async with aiohttp.ClientSession() as s:

            async def one() -> None:
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 202, r.status

            started = time.perf_counter()
            for _ in range(requests // 4):
                await asyncio.gather(*(one() for _ in range(4)))
            elapsed = time.perf_counter() - started
    finally:
        await runner.cleanup()
        for stored in client.scan_iter(match=f"{settings.redis_key_prefix}:*"):
            client.delete(stored)
        client.close()
    return (requests // 4) * 4 * size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--pairs", type=int, default=3)
    ns = parser.parse_args()
    print(f"{'pair':<5} {'without throttle':>17} {'with throttle':>14} {'ratio':>7}")
    for pair in range(1, ns.pairs + 1):
        base = asyncio.run(profiles_per_s(throttle=False, requests=ns.requests))
        ours = asyncio.run(profiles_per_s(throttle=True, requests=ns.requests))
        print(f"{pair:<5} {base:>13,.0f} p/s {ours:>10,.0f} p/s {ours / base:>7.3f}")


if __name__ == "__main__":
    main()
