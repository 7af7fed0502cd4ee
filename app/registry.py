"""Destinations and connections as the workers and the API see them: kept in Redis.

The configuration file (and later the admin API) publishes here; readers cache for a few
seconds, so a change reaches running workers without a restart.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from app.destinations import Config, Connection, Destination
from app.keys import Keys

#: How long a reader trusts its copy: the delay before an edit reaches running workers.
CACHE_TTL_S = 2.0


def _connection_doc(conn: Connection) -> str:
    doc: dict[str, Any] = conn.model_dump(mode="python")
    for name in ("access_token", "refresh_token"):
        secret = getattr(conn, name)
        doc[name] = secret.get_secret_value() if secret is not None else None
    return json.dumps(doc)


def publish_sync(client: redis.Redis, keys: Keys, config: Config) -> None:
    """Write every connection and destination of ``config`` (replacing same-id entries)."""
    pipe = client.pipeline()
    for conn in config.connections:
        pipe.hset(keys.connections(), conn.id, _connection_doc(conn))
    for dest in config.destinations:
        pipe.hset(keys.destinations(), dest.id, dest.model_dump_json())
        # A corrected configuration gets its mapping IDs tried again.
        pipe.delete(keys.invalid_mappings(dest.id))
    pipe.execute()


def destination_sync(client: redis.Redis, keys: Keys, dest_id: str) -> Destination | None:
    raw = cast("bytes | None", client.hget(keys.destinations(), dest_id))
    return None if raw is None else Destination.model_validate_json(raw)


class Registry:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, ttl_s: float = CACHE_TTL_S) -> None:
        self._redis = client
        self._keys = keys
        self._ttl_s = ttl_s
        self._loaded_at = float("-inf")
        self._destinations: dict[str, Destination] = {}
        self._connections: dict[str, Connection] = {}

    async def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._ttl_s:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._keys.destinations())
        pipe.hgetall(self._keys.connections())
        dests, conns = await pipe.execute()
        self._destinations = {
            k.decode(): Destination.model_validate_json(v) for k, v in dests.items()
        }
        self._connections = {
            k.decode(): Connection.model_validate_json(v) for k, v in conns.items()
        }
        self._loaded_at = time.monotonic()

    async def destination(self, dest_id: str) -> Destination | None:
        await self._refresh()
        return self._destinations.get(dest_id)

    async def connection(self, conn_id: str) -> Connection | None:
        await self._refresh()
        return self._connections.get(conn_id)

    async def destination_ids(self) -> list[str]:
        await self._refresh()
        return sorted(self._destinations)
