"""What a status shows of a destination's identity resolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from app.config.destinations import Destination
from app.core.keys import Keys
from app.resolve.emails import EmailStore

#: Status field -> the drain's tally (``drain_`` + name in the totals hash).
COUNTS = {
    "from_cache": "resolve_cache_hits",
    "by_lookup": "resolve_looked_up",
    "lookups": "resolve_lookups",
    "not_found": "resolve_not_found",
    "ambiguous": "resolve_ambiguous",
    "created": "resolve_created",
    "create_requests": "resolve_create_requests",
    "gone": "resolve_gone",
}


async def resolve_status(
    client: aioredis.Redis,
    keys: Keys,
    dest: Destination,
    totals: Mapping[str, int],
    *,
    now_ms: int,
) -> dict[str, Any]:
    """The ``resolve`` section of a destination's status document."""
    emails = EmailStore(client, keys)
    due, resolving = await emails.waiting(dest.id)
    oldest = await emails.oldest_ms(dest.id)
    identity = dest.identity
    return {
        "by_email": identity is not None and identity.by_email,
        "on_missing": identity.on_missing if identity else "skip",
        "on_ambiguous": identity.on_ambiguous if identity else "skip",
        "waiting": due + resolving,
        "resolving": resolving,
        "oldest_waiting_s": None if oldest is None else max(0, now_ms - oldest) / 1000,
        **{name: int(totals.get(f"drain_{tally}", 0)) for name, tally in COUNTS.items()},
    }
