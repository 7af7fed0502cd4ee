"""Destinations and connections as the workers and the API see them: kept in Redis.

The configuration file (and later the admin API) publishes here; readers cache for a few
seconds, so a change reaches running workers without a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from app.config.broken import Broken, broken, why_unreadable
from app.config.destinations import Config, Connection, Destination
from app.connections.crypto import TokenCipher, default_cipher
from app.connections.records import ConnectionStoreSync, stored_metadata
from app.core.errors import UnreadableRecord
from app.core.keys import Keys
from app.core.scripts import package_scripts
from app.core.wake import queue_wake

#: How long a reader trusts its copy: the delay before an edit reaches running workers.
CACHE_TTL_S = 2.0


def publish_sync(
    client: redis.Redis, keys: Keys, config: Config, *, cipher: TokenCipher | None = None
) -> None:
    """Write every connection and destination of ``config`` (replacing same-id entries).

    Connections go through the connection store: tokens encrypted with ``cipher`` (default:
    the process's settings); a connection given without tokens keeps those it has.
    """
    conns = ConnectionStoreSync(client, keys, cipher or default_cipher())
    unblocked = [conn.id for conn in config.connections if conns.publish(conn)]
    # No transaction: the catalog and each destination's keys are different cluster slots.
    pipe = client.pipeline(transaction=False)
    for dest in config.destinations:
        pipe.hset(keys.destinations(), dest.id, dest.model_dump_json())
        # A corrected configuration gets its mapping IDs tried again; as an admin edit does
        # (swap_destination), a hold set while it was disabled is lifted and it is woken.
        for key in (keys.invalid_mappings(dest.id), keys.hold(dest.id), keys.retired(dest.id)):
            pipe.delete(key)  # one key per DEL: a cluster pipeline takes no more
    queue_wake(pipe, keys, *(dest.id for dest in config.destinations))
    pipe.execute()
    for conn_id in unblocked:
        # Destinations held while their connection could not send start again; only then,
        # since a resume restarts their changes' retry age (app/delivery/drain.py).
        conns.resume(conn_id)


def destination_sync(client: redis.Redis, keys: Keys, dest_id: str) -> Destination | None:
    """The destination ``dest_id`` (None: absent); raises ``UnreadableRecord`` when its stored
    record cannot be read."""
    raw = cast("bytes | None", client.hget(keys.destinations(), dest_id))
    return None if raw is None else read_destination(dest_id, raw)


def read_destination(dest_id: str, raw: bytes) -> Destination:
    """A stored destination; ``UnreadableRecord`` (naming what is wrong) when it cannot be read."""
    try:
        return Destination.model_validate_json(raw)
    except ValueError as exc:
        raise UnreadableRecord("destination", dest_id, why_unreadable(exc)) from None


async def stored_destinations(client: aioredis.Redis, keys: Keys) -> dict[str, bytes]:
    """Every destination's stored document, by id (what ``swap_destination`` compares)."""
    raw = await cast("Awaitable[dict[bytes, bytes]]", client.hgetall(keys.destinations()))
    return {k.decode(): v for k, v in raw.items()}


async def stored_destination(client: aioredis.Redis, keys: Keys, dest_id: str) -> bytes | None:
    return await cast("Awaitable[bytes | None]", client.hget(keys.destinations(), dest_id))


class DestinationBusy(Exception):
    """A deletion found changes pending, in flight or failed (they arrived after the count)."""


async def swap_destination(
    client: aioredis.Redis,
    keys: Keys,
    dest_id: str,
    *,
    expected: bytes | None,
    new: Destination | None,
    only_if_idle: bool = False,
) -> bool:
    """Publish (``new``) or delete (None) one destination if its stored document is still
    ``expected`` (None: absent); clears its invalid-mapping marks. False: it had changed.
    A deletion ``only_if_idle`` raises ``DestinationBusy`` when anything is pending, in
    flight or failed, checked in the same script that makes ``merge.lua`` refuse its changes.

    The catalog and the destination's keys live in different cluster slots, so this takes
    steps (docs/operations.md, "Redis Cluster"): a deletion retires the destination, then
    removes it from the catalog; a publication writes the catalog, then lifts the marks."""
    if new is None and not await _retire(client, keys, dest_id, expected, only_if_idle):
        return False
    cas: list[str | bytes] = [dest_id, expected or b"", new.model_dump_json() if new else ""]
    swap = package_scripts("app.store").aio(client, "catalog_swap")
    if not await swap(keys=[keys.destinations()], args=cas):
        if new is None and await stored_destination(client, keys, dest_id) is not None:
            await client.delete(keys.retired(dest_id))  # another edit won: it stays
        return False
    pipe = client.pipeline(transaction=False)
    # A changed destination gets its mapping IDs tried again (as publish_sync does); an edit
    # (enabling, say) lifts a hold set while it was disabled, and wakes its drains.
    pipe.delete(keys.invalid_mappings(dest_id))
    if new is not None:
        pipe.delete(keys.retired(dest_id))
        pipe.delete(keys.hold(dest_id))
        queue_wake(pipe, keys, dest_id)
    await pipe.execute()
    return True


async def _retire(
    client: aioredis.Redis, keys: Keys, dest_id: str, expected: bytes | None, only_if_idle: bool
) -> bool:
    """Make ``merge.lua`` refuse the destination's changes, if it is still ``expected``
    (False: it changed) and, ``only_if_idle``, nothing is pending, in flight or failed."""
    if await stored_destination(client, keys, dest_id) != expected:
        return False
    kk = [keys.retired(dest_id), keys.due(dest_id), keys.leases(dest_id), keys.failures(dest_id)]
    kk += [keys.email_due(dest_id), keys.email_leases(dest_id)]  # changes waiting by email
    retire = package_scripts("app.store").aio(client, "retire_destination")
    if await retire(keys=kk, args=[int(only_if_idle)]) == -1:
        raise DestinationBusy(dest_id)
    return True


class Registry:
    """Destinations and connections, cached for ``ttl_s``. Connections are metadata only
    (user, rate limit, reserve share): tokens are never decrypted here; senders get theirs
    from ``app.connections.oauth.TokenManager``.

    A stored record that cannot be read is left out (as if absent) and listed by
    ``broken()`` with its reason, logged once: it never keeps the others from being read."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, ttl_s: float = CACHE_TTL_S) -> None:
        self._redis = client
        self._keys = keys
        self._ttl_s = ttl_s
        self._loaded_at = float("-inf")
        self._destinations: dict[str, Destination] = {}
        self._connections: dict[str, Connection] = {}
        self._broken: dict[tuple[str, str], Broken] = {}

    async def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._ttl_s:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._keys.destinations())
        pipe.hgetall(self._keys.connections())
        dests, conns = await pipe.execute()
        found: dict[tuple[str, str], Broken] = {}
        self._destinations = {}
        for key, raw in dests.items():
            dest_id = key.decode(errors="replace")
            try:
                self._destinations[dest_id] = read_destination(dest_id, raw)
            except UnreadableRecord as exc:
                found["destination", dest_id] = broken("destination", dest_id, exc)
        self._connections = {}
        for key, raw in conns.items():
            conn_id = key.decode(errors="replace")
            try:
                self._connections[conn_id] = stored_metadata(raw)
            except (ValueError, TypeError, AttributeError) as exc:
                found["connection", conn_id] = broken("connection", conn_id, exc)
        self._broken = found
        self._loaded_at = time.monotonic()

    async def destination(self, dest_id: str) -> Destination | None:
        await self._refresh()
        return self._destinations.get(dest_id)

    async def connection(self, conn_id: str) -> Connection | None:
        await self._refresh()
        return self._connections.get(conn_id)

    async def destination_ids(self) -> list[str]:
        """The destinations that can be read (the broken ones are in ``broken()``)."""
        await self._refresh()
        return sorted(self._destinations)

    async def all_destination_ids(self) -> list[str]:
        """Every stored destination, the broken ones included (status lists show them)."""
        await self._refresh()
        bad = [dest_id for kind, dest_id in self._broken if kind == "destination"]
        return sorted([*self._destinations, *bad])

    async def broken(self) -> list[Broken]:
        """Every destination and connection record that cannot be read, with the reason."""
        await self._refresh()
        return [self._broken[k] for k in sorted(self._broken)]

    async def broken_destination(self, dest_id: str) -> Broken | None:
        """Why ``dest_id``'s stored record cannot be read (None: it can, or it is absent)."""
        await self._refresh()
        return self._broken.get(("destination", dest_id))

    def forget(self) -> None:
        """Drop the cached copy: the next read loads again (after this process's own edit)."""
        self._loaded_at = float("-inf")


async def any_destination_of(
    client: aioredis.Redis, keys: Keys, conn: str, wants: Callable[[dict[str, Any]], bool]
) -> bool:
    """Whether any stored destination of connection ``conn`` is one ``wants`` (given its
    record as JSON): what a connection must be granted follows from its destinations."""
    raw = await cast("Awaitable[dict[bytes, bytes]]", client.hgetall(keys.destinations()))
    for value in raw.values():
        try:
            doc = json.loads(value)
        except ValueError:
            continue  # a broken record, reported where destinations are read
        if isinstance(doc, dict) and doc.get("connection") == conn and wants(doc):
            return True
    return False
