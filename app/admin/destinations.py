"""Creating, changing and deleting destinations one at a time (the admin API and CLI).

Bodies are one destination as in the configuration file. Every problem is reported with its
location in the body (a JSON Pointer such as ``/audiences/<audience id>``). Writes are
compare-and-set against what was read, so concurrent edits never overwrite each other
silently; running workers see a change within ``registry.CACHE_TTL_S``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import ValidationError

from app.config.broken import Broken, broken
from app.config.destinations import Destination, Loc, describe_error, destination_conflicts
from app.core.errors import UnreadableRecord
from app.core.keys import Keys
from app.store import by_email
from app.store.prospects import ProspectStore
from app.store.registry import (
    DestinationBusy,
    read_destination,
    stored_destination,
    stored_destinations,
    swap_destination,
)

#: pydantic's error type for the model's own cross-field checks, reported from raw data instead.
_CONFLICT = "config_conflict"
_IDENTITY = (
    "is required: the identity namespace of the profiles' identityMap whose ids are "
    "Outreach prospect ids (mapped to OutreachId)"
)


class Invalid(ValueError):
    """The body is not a valid destination; ``problems`` are (location, reason) pairs."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


class NotFound(LookupError):
    def __init__(self, dest_id: str) -> None:
        super().__init__(f"no destination {dest_id!r}")


class Conflict(Exception):
    """The request contradicts the stored state (exists, changed meanwhile, has a backlog)."""


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a deletion discarded (all zero unless it was forced)."""

    pending: int
    in_flight: int
    failures: int


def merge_patch(target: object, patch: object) -> object:
    """RFC 7396 JSON Merge Patch: objects merge recursively, ``null`` removes a member."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _as_json(raw: bytes) -> object:
    """A stored record as JSON; garbage as nothing (a merge patch then builds it anew)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def validate(data: object, *, path_id: str | None = None) -> Destination:
    """The destination ``data`` describes (its connection unchecked), or ``Invalid`` naming
    every problem; ``path_id``: the id the URL names, which the body may repeat but not change."""
    if not isinstance(data, dict):
        raise Invalid([((), "the body must be a JSON object (one destination)")])
    problems: list[tuple[Loc, str]] = []
    if path_id is not None:
        if "id" in data and data["id"] != path_id:
            problems.append(
                (("id",), f"must be {path_id!r}, the id in the path (ids never change)")
            )
        data = {**data, "id": path_id}
    problems += destination_conflicts(data.get("audiences"), data.get("attributes"))
    try:
        dest = Destination.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(e) for e in exc.errors() if e["type"] != _CONFLICT]
    if problems:
        raise Invalid(problems)
    return dest


def _describe(error: Any) -> tuple[Loc, str]:
    loc, msg = describe_error(error)
    if loc == ("identity_namespace",) and error["type"] in ("string_too_short", "string_type"):
        msg = _IDENTITY
    return loc, msg


class DestinationAdmin:
    """Destinations in Redis, edited one by one."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, *, on_change: Callable[[], None] | None = None
    ) -> None:
        self._redis = client
        self._keys = keys
        self._store = ProspectStore(client, keys)
        self._on_change = on_change

    async def catalog(self) -> tuple[list[Destination], list[Broken]]:
        """Every destination by id, and every stored record that cannot be read, with the
        reason: one broken record never hides the others."""
        docs = await stored_destinations(self._redis, self._keys)
        good: list[Destination] = []
        bad: list[Broken] = []
        for dest_id in sorted(docs):
            try:
                good.append(read_destination(dest_id, docs[dest_id]))
            except UnreadableRecord as exc:
                bad.append(broken("destination", dest_id, exc))
        return good, bad

    async def list(self) -> list[Destination]:
        """Every destination that can be read (``catalog`` adds the broken ones)."""
        return (await self.catalog())[0]

    async def get(self, dest_id: str) -> Destination:
        """The destination; ``UnreadableRecord`` when its stored record cannot be read (it
        can still be replaced with ``replace`` or removed with ``delete``)."""
        raw = await self._read(dest_id)
        return read_destination(dest_id, raw)

    async def create(self, data: object) -> Destination:
        if isinstance(data, dict) and "id" not in data:
            raise Invalid([(("id",), "is required")])
        dest = validate(data)
        await self._check_connection(dest)
        if not await self._swap(dest.id, expected=None, new=dest):
            raise Conflict(f"destination {dest.id!r} already exists; change it with PUT or PATCH")
        return dest

    async def replace(self, dest_id: str, data: object) -> Destination:
        """Replace the destination (a broken stored record too)."""
        raw = await self._read(dest_id)
        return await self._write(dest_id, raw, data)

    async def patch(self, dest_id: str, patch: object) -> Destination:
        """Apply a JSON Merge Patch (``{"enabled": false}`` disables). A stored record that
        cannot be read is patched as far as it is a JSON object (the result must be valid)."""
        if not isinstance(patch, dict):
            raise Invalid([((), "the body must be a JSON object (a JSON Merge Patch)")])
        raw = await self._read(dest_id)
        return await self._write(dest_id, raw, merge_patch(_as_json(raw), patch))

    async def delete(self, dest_id: str, *, force: bool = False) -> Deleted:
        """Remove the destination and everything kept for it. Refused while changes are
        pending or in flight, or failure records remain, unless ``force`` discards them."""
        raw = await self._read(dest_id)
        pending, in_flight, failures = await self._leftovers(dest_id)
        if (pending or in_flight or failures) and not force:
            raise self._busy(dest_id, pending, in_flight, failures)
        try:
            # Checked again atomically with the deletion: changes may have arrived since.
            swapped = await self._swap(dest_id, expected=raw, new=None, only_if_idle=not force)
        except DestinationBusy:
            raise self._busy(dest_id, *await self._leftovers(dest_id)) from None
        if not swapped:
            raise Conflict(f"destination {dest_id!r} changed meanwhile; read it again and retry")
        await self._purge(dest_id)
        return Deleted(pending, in_flight, failures) if force else Deleted(0, 0, 0)

    async def _leftovers(self, dest_id: str) -> tuple[int, int, int]:
        pending, in_flight = await self._store.backlog(dest_id)
        # Changes of profiles known by email, waiting for resolution, count as pending.
        waiting, resolving = await by_email.waiting(self._redis, self._keys, dest_id)
        failures = await cast("Awaitable[int]", self._redis.hlen(self._keys.failures(dest_id)))
        return pending + waiting - resolving, in_flight + resolving, failures

    @staticmethod
    def _busy(dest_id: str, pending: int, in_flight: int, failures: int) -> Conflict:
        return Conflict(
            f"destination {dest_id!r} still has {pending} prospect(s) with pending changes, "
            f"{in_flight} in flight and {failures} failure record(s); wait for them to "
            "be delivered (replay or purge the failures), or delete with force=true to "
            "discard them"
        )

    async def _read(self, dest_id: str) -> bytes:
        """The stored record as it is (unvalidated: a broken one can be replaced or deleted)."""
        raw = await stored_destination(self._redis, self._keys, dest_id)
        if raw is None:
            raise NotFound(dest_id)
        return raw

    async def _write(self, dest_id: str, raw: bytes, data: object) -> Destination:
        dest = validate(data, path_id=dest_id)
        await self._check_connection(dest)
        if not await self._swap(dest_id, expected=raw, new=dest):
            raise Conflict(f"destination {dest_id!r} changed meanwhile; read it again and retry")
        return dest

    async def _check_connection(self, dest: Destination) -> None:
        known = await cast(
            "Awaitable[bool]", self._redis.hexists(self._keys.connections(), dest.connection)
        )
        if not known:
            msg = (
                f"no connection {dest.connection!r}: add it first "
                "(outreach-sync connections add, the OAuth flow, or config load)"
            )
            raise Invalid([(("connection",), msg)])

    async def _swap(
        self,
        dest_id: str,
        *,
        expected: bytes | None,
        new: Destination | None,
        only_if_idle: bool = False,
    ) -> bool:
        done = await swap_destination(
            self._redis, self._keys, dest_id, expected=expected, new=new, only_if_idle=only_if_idle
        )
        if done and self._on_change is not None:
            self._on_change()
        return done

    async def _purge(self, dest_id: str) -> None:
        # Every key of one destination carries "{dest}" (app/core/keys.py): pending changes,
        # delivered state, leases, counters, failure records; all but the retired marker,
        # which keeps merge.lua refusing changes a producer sent before the deletion.
        match = f"{self._keys.prefix}:{{{dest_id}}}:*"
        keep = self._keys.retired(dest_id).encode()
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=match, count=1000):
            if key == keep:
                continue
            batch.append(key)
            if len(batch) >= 500:
                await self._redis.delete(*batch)
                batch.clear()
        if batch:
            await self._redis.delete(*batch)
