"""What waits for identity resolution (``app/resolve``), read by the status and the admin's
deletion check without the resolve stage itself: emails due or being resolved, and the age of
the oldest change waiting under one."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.core.keys import Keys
from app.core.scripts import package_scripts
from app.store.counters import LAG_EXACT_UP_TO


async def waiting(client: aioredis.Redis, keys: Keys, dest: str) -> tuple[int, int]:
    """(emails waiting for resolution, of which being resolved now)."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.email_due(dest))
    pipe.zcard(keys.email_leases(dest))
    due, resolving = await pipe.execute()
    return int(due) + int(resolving), int(resolving)


async def oldest_ms(client: aioredis.Redis, keys: Keys, dest: str) -> int | None:
    """When the oldest change waiting for resolution arrived (the store's lag script)."""
    script = package_scripts("app.store").aio(client, "oldest")
    res = await script(keys=[keys.email_first_seen(dest)], args=[LAG_EXACT_UP_TO])
    return None if int(res[0]) < 0 else int(res[0])
