"""How long a gzip bomb stalls the API's event loop: health checks answered meanwhile.

``python -m bench.gzip_bomb [--inflated-mb N]`` starts the API twice on the test database,
once as it is (bodies inflated after authentication, bounded, on a thread) and once with
aiohttp's own inflating turned back on (the baseline: how it was), posts the bomb with and
without a key, and meanwhile asks ``/healthz`` every 5 ms. It prints the slowest health check
and the bomb's answer for each; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
import zlib

import aiohttp
import redis
from aiohttp import web

from app.api.app import make_app
from app.config.destinations import parse_config
from app.core.settings import Settings
from app.store.registry import publish_sync
from bench.wiring import BENCH_REDIS_URL

ADMIN_KEY = "bench-gzip-bomb-admin-key-0123456789"


def bomb(inflated_mb: int) -> bytes:
    """``inflated_mb`` MB of newlines, gzipped (about 1 kB per MB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\n" * (1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(inflated_mb)) + packer.flush()


async def _health_while(base: str, send: asyncio.Task[tuple[int, float]]) -> float:
    worst = 0.0
    async with aiohttp.ClientSession() as s:
        while not send.done():
            started = time.perf_counter()
            async with s.get(f"{base}/healthz") as r:
                await r.read()
            worst = max(worst, time.perf_counter() - started)
            await asyncio.sleep(0.005)
    return worst


async def _post(base: str, body: bytes, *, key: bool) -> tuple[int, float]:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    if key:
        headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/destinations/bench/profiles", data=body, headers=headers) as r,
    ):
        await r.read()
        return r.status, time.perf_counter() - started


async def measure(body: bytes, *, baseline: bool, key: bool) -> tuple[int, float]:
    """The bomb's answer and the slowest health check while it was sent."""
    redis_url = BENCH_REDIS_URL
    settings = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        redis_key_prefix=f"bench{uuid.uuid4().hex[:8]}",
        admin_api_key=ADMIN_KEY,  # type: ignore[arg-type]
    )
    client = redis.Redis.from_url(redis_url)
    config = {
        "connections": [{"id": "conn", "user": "bench", "access_token": "bench-token"}],
        "destinations": [{"id": "bench", "name": "Bench", "connection": "conn"}],
    }
    publish_sync(client, settings.keys, parse_config(config))
    app = make_app(settings)
    if baseline:
        app._handler_args = {"auto_decompress": True}  # aiohttp inflating, as before
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        send = asyncio.create_task(_post(base, body, key=key))
        worst = await _health_while(base, send)
        status, _ = await send
    finally:
        await runner.cleanup()
        for stored in client.scan_iter(match=f"{settings.redis_key_prefix}:*"):
            client.delete(stored)
        client.close()
    return status, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inflated-mb", type=int, default=1024)
    ns = parser.parse_args()
    body = bomb(ns.inflated_mb)
    print(f"gzip bomb: {len(body) / 1e6:.1f} MB sent, {ns.inflated_mb} MB inflated")
    print(f"{'server':<34} {'key':<5} {'answer':>6} {'slowest /healthz':>17} {'ratio':>7}")
    for key in (False, True):
        base_status, base_worst = asyncio.run(measure(body, baseline=True, key=key))
        status, ours_worst = asyncio.run(measure(body, baseline=False, key=key))
        label = "yes" if key else "no"
        before = "aiohttp inflates (before)"
        print(f"{before:<34} {label:<5} {base_status:>6} {base_worst:>15.3f} s")
        ratio = ours_worst / base_worst if base_worst else float("nan")
        print(
            f"{'after auth, bounded, thread (now)':<34} {label:<5} {status:>6} "
            f"{ours_worst:>15.3f} s {ratio:>7.3f}"
        )


if __name__ == "__main__":
    main()
