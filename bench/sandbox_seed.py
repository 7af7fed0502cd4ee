"""How fast the sandbox takes a large seed and answers lookups by email against it, so tests
and benchmarks of identity resolution know what setting up 100,000 prospects costs.

``python -m bench.sandbox_seed [--prospects N] [--lookups M] [--emails-per-lookup K]`` starts
a sandbox in this process, seeds N prospects in one control call, then times M lookups of K
emails each (case differing from the seed's) and the "one prospect per email" check.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time

import aiohttp
from aiohttp import web

from app.sandbox import SandboxConfig, make_app

TOKEN = "bench-token"


async def run(prospects: int, lookups: int, per_lookup: int) -> dict[str, float]:
    """Seconds for the seed, per lookup, and for the duplicates check."""
    config = SandboxConfig(static_tokens={TOKEN: "bench"}, quota_limit=10**9)
    runner = web.AppRunner(make_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            return await _measure(session, url, prospects, lookups, per_lookup)
    finally:
        await runner.cleanup()


async def _measure(
    session: aiohttp.ClientSession, url: str, prospects: int, lookups: int, per_lookup: int
) -> dict[str, float]:
    seed = [
        {"emails": [f"p{i}@example.com"], "attributes": {"firstName": f"P{i}", "custom4": "x"}}
        for i in range(prospects)
    ]
    body = io.BytesIO(json.dumps({"prospects": seed}).encode())
    started = time.perf_counter()
    async with session.post(f"{url}/_sandbox/prospects", data=body) as resp:
        assert resp.status == 200, await resp.text()
    seeded = time.perf_counter() - started
    step = max(1, prospects // (per_lookup * lookups or 1))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started = time.perf_counter()
    for n in range(lookups):
        first = n * per_lookup * step
        emails = ",".join(
            f"P{(first + k * step) % prospects}@EXAMPLE.com" for k in range(per_lookup)
        )
        params = {"filter[emails]": emails, "page[size]": str(per_lookup)}
        async with session.get(f"{url}/api/v2/prospects", params=params, headers=headers) as r:
            found = len((await r.json())["data"])
            assert found == per_lookup, found
    looked_up = (time.perf_counter() - started) / max(1, lookups)
    started = time.perf_counter()
    async with session.get(f"{url}/_sandbox/emails?duplicates=true") as resp:
        assert (await resp.json())["emails"] == {}
    return {"seed_s": seeded, "lookup_s": looked_up, "duplicates_s": time.perf_counter() - started}


def main() -> None:
    """Print the three figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_seed")
    parser.add_argument("--prospects", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--emails-per-lookup", type=int, default=50)
    ns = parser.parse_args()
    figures = asyncio.run(run(ns.prospects, ns.lookups, ns.emails_per_lookup))
    print(f"seed {ns.prospects:,} prospects in one call   {figures['seed_s']:.2f} s")
    print(
        f"lookup of {ns.emails_per_lookup} emails (mean of {ns.lookups})  "
        f"{figures['lookup_s'] * 1000:.1f} ms"
    )
    print(f"one-prospect-per-email check        {figures['duplicates_s']:.2f} s")


if __name__ == "__main__":
    main()
