"""Producers' API keys: ``osk_<key_id>_<secret>``, shown once, kept in Redis only as a digest.

A key is scoped to some destinations or to all of them; revoking keeps its record (who had
access, until when) but refuses it at once. The CLI (``outreach-sync keys``) manages them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import redis.asyncio as aioredis

from app.config.broken import Broken, broken, why_unreadable
from app.core.errors import UnreadableRecord
from app.core.keys import Keys

PREFIX = "osk_"
#: 12 hex characters: the public half, how a key is found (and named in logs and lists).
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_PRESENTED = re.compile(r"osk_(?P<key_id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{32,128})")
NAME_MAX = 100


class KeyRefused(Exception):
    """A presented key that opens nothing; ``reason`` is safe to show (it never quotes the key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProducerKey:
    """What is known of a key, without its secret."""

    key_id: str
    name: str
    #: Destination ids the key may send to; None: every destination.
    destinations: tuple[str, ...] | None
    created_at: str
    revoked_at: str | None = None

    def allows(self, destination_id: str) -> bool:
        return self.destinations is None or destination_id in self.destinations

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["destinations"] = None if self.destinations is None else list(self.destinations)
        return doc


def digest(secret: str) -> str:
    # The secret is 32 random bytes (secrets.token_urlsafe): it cannot be guessed and its
    # digest cannot be brute-forced, so one SHA-256 protects it fully. Slow hashes (bcrypt,
    # argon2) exist to stretch low-entropy passwords; here they would only cost every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _record(key: ProducerKey, sha256: str) -> str:
    return json.dumps({**key.as_dict(), "sha256": sha256})


def _parse(raw: bytes | str) -> tuple[ProducerKey, str]:
    doc = json.loads(raw)
    dests = doc["destinations"]
    if not (dests is None or (isinstance(dests, list) and all(isinstance(d, str) for d in dests))):
        raise ValueError("destinations: must be a list of ids or null")
    texts = {n: doc[n] for n in ("key_id", "name", "created_at", "sha256")}
    revoked = doc.get("revoked_at")
    if not all(isinstance(v, str) for v in texts.values()) or not isinstance(revoked, str | None):
        raise ValueError("key_id, name, created_at, sha256 and revoked_at must be strings")
    key = ProducerKey(
        key_id=texts["key_id"],
        name=texts["name"],
        destinations=None if dests is None else tuple(dests),
        created_at=texts["created_at"],
        revoked_at=revoked,
    )
    return key, texts["sha256"]


def _readable(key_id: str, raw: bytes | str) -> tuple[ProducerKey, str]:
    """``_parse``, or ``UnreadableRecord`` naming what is wrong (never the record)."""
    try:
        return _parse(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableRecord("producer_key", key_id, _why(exc)) from None


def _why(exc: Exception) -> str:
    if type(exc) is ValueError:  # our own check above: its message names the member
        return str(exc)
    return why_unreadable(exc)


class ProducerKeys:
    """The key records of one deployment (``Keys.producer_keys``)."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self._hash = keys.producer_keys()

    async def create(
        self, name: str, destinations: Sequence[str] | None
    ) -> tuple[ProducerKey, str]:
        """A new key scoped to ``destinations`` (None: all); returns it and the full key text,
        which is not kept anywhere and cannot be shown again."""
        name = name.strip()
        if not 1 <= len(name) <= NAME_MAX:
            raise ValueError(f"name: give 1 to {NAME_MAX} characters")
        if destinations is not None and not destinations:
            raise ValueError("destinations: name at least one, or allow all destinations")
        scope = None if destinations is None else tuple(dict.fromkeys(destinations))
        while True:
            key = ProducerKey(secrets.token_hex(6), name, scope, _now())
            secret = secrets.token_urlsafe(32)
            added = await cast(
                "Awaitable[int]",
                self._redis.hsetnx(self._hash, key.key_id, _record(key, digest(secret))),
            )
            if added:  # else a key id collided (2^48 of them): draw again
                return key, f"{PREFIX}{key.key_id}_{secret}"

    async def catalog(self) -> tuple[list[ProducerKey], list[Broken]]:
        """Every key by creation, and every record that cannot be read, with the reason (a
        broken record refuses only its own key)."""
        raw = await cast("Awaitable[dict[bytes, bytes]]", self._redis.hgetall(self._hash))
        good: list[ProducerKey] = []
        bad: list[Broken] = []
        for key, doc in raw.items():
            key_id = key.decode(errors="replace")
            try:
                good.append(_readable(key_id, doc)[0])
            except UnreadableRecord as exc:
                bad.append(broken("producer_key", key_id, exc))
        return sorted(good, key=lambda k: k.created_at), sorted(bad, key=lambda b: b.id)

    async def list(self) -> list[ProducerKey]:
        return (await self.catalog())[0]

    async def delete(self, key_id: str) -> bool:
        """Remove a key's record (a broken one too): the key is refused from then on and no
        trace of it is kept. False: no such record."""
        return bool(await cast("Awaitable[int]", self._redis.hdel(self._hash, key_id)))

    async def get(self, key_id: str) -> ProducerKey | None:
        found = await self._get(key_id)
        return None if found is None else found[0]

    async def revoke(self, key_id: str) -> ProducerKey | None:
        """Refuse the key from now on (a revoked key stays revoked); None: no such key."""
        found = await self._get(key_id)
        if found is None:
            return None
        key, sha256 = found
        if key.revoked_at is None:
            key = replace(key, revoked_at=_now())
            await cast("Awaitable[int]", self._redis.hset(self._hash, key_id, _record(key, sha256)))
        return key

    async def verify(self, presented: str) -> ProducerKey:
        """The key ``presented`` is, if it is valid and not revoked; else ``KeyRefused``."""
        match = _PRESENTED.fullmatch(presented)
        if match is None:
            raise KeyRefused("not an outreach-sync API key (osk_...)")
        try:
            found = await self._get(match["key_id"])
        except UnreadableRecord as exc:
            broken("producer_key", exc.record_id, exc)
            raise KeyRefused("this API key's stored record cannot be read") from None
        # The digest is compared even for an unknown id, so timing tells nothing either way.
        key, expected = found if found is not None else (None, "0" * 64)
        if not hmac.compare_digest(digest(match["secret"]), expected) or key is None:
            raise KeyRefused("unknown API key")
        if key.revoked_at is not None:
            raise KeyRefused(f"API key {key.key_id} was revoked at {key.revoked_at}")
        return key

    async def _get(self, key_id: str) -> tuple[ProducerKey, str] | None:
        if not _KEY_ID.fullmatch(key_id):
            return None
        raw = await cast("Awaitable[bytes | None]", self._redis.hget(self._hash, key_id))
        return None if raw is None else _readable(key_id, raw)
