"""The Redis side of resolution: emails waiting for their prospect(s), claimed under a lease,
moved into prospects' pending changes by version (``lua/adopt.lua``), the lookup cache and
the create intents. Every key carries the destination's hash tag (one cluster slot)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from app.core.keys import Keys
from app.core.operations import run_async
from app.core.scripts import package_scripts
from app.store import by_email
from app.store.prospects import encode, merge_op

SCRIPTS = package_scripts("app.resolve")
#: What Outreach answered for an email: (prospect id, updatedAt) per prospect having it.
Matches = list[tuple[int, str]]
IntentState = Literal["sending", "unknown", "taken"]


@dataclass(frozen=True, slots=True)
class Waiting:
    """One claimed email: its pending fields (decoded) and their versions."""

    email: str
    fields: dict[str, Any]
    versions: dict[str, str]


def _parse_claim(flat: Sequence[Any]) -> list[Waiting]:
    out: list[Waiting] = []
    i = 0
    while i < len(flat):
        email, n = _text(flat[i]), int(flat[i + 1])
        fields: dict[str, Any] = {}
        versions: dict[str, str] = {}
        for j in range(i + 2, i + 2 + 3 * n, 3):
            name = _text(flat[j])
            fields[name] = json.loads(flat[j + 1])
            versions[name] = _text(flat[j + 2])
        out.append(Waiting(email, fields, versions))
        i += 2 + 3 * n
    return out


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class EmailStore:
    """Async adapter of one deployment's email-keyed state."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def claim(
        self, dest: str, *, now_ms: int, lease_ms: int, batch: int, token: str
    ) -> list[Waiting]:
        """Claim up to ``batch`` emails due (or whose claim expired) with their fields."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(k.email_leases(dest), "-inf", now_ms, start=0, num=batch)
        pipe.zrangebyscore(k.email_due(dest), "-inf", now_ms, start=0, num=batch)
        expired, due = await pipe.execute()
        candidates = list(dict.fromkeys(_text(e) for e in [*expired, *due]))[:batch]
        if not candidates:
            return []
        kk = [k.email_due(dest), k.email_leases(dest), k.email_lease_tokens(dest)]
        for email in candidates:
            kk += [k.email_pending(dest, email), k.email_versions(dest, email)]
        flat = await SCRIPTS.aio(self.redis, "claim")(
            keys=kk, args=[now_ms, lease_ms, token, *candidates]
        )
        return _parse_claim(flat)

    async def adopt(
        self,
        dest: str,
        w: Waiting,
        prospects: Sequence[int],
        token: str,
        *,
        now_ms: int,
        sent: bool = False,
    ) -> int:
        """Move ``w``'s pending fields into ``prospects`` by version (``sent``: the fields
        of the snapshot went out with the create: delivered, not pending). -1: lease lost."""
        k = self.keys
        kk = [
            k.email_due(dest),
            k.email_leases(dest),
            k.email_lease_tokens(dest),
            k.email_first_seen(dest),
            k.email_creates(dest),
            k.email_of(dest),
            k.email_pending(dest, w.email),
            k.email_versions(dest, w.email),
            k.due(dest),
            k.leases(dest),
            k.first_seen(dest),
        ]
        for p in prospects:
            kk += [k.pending(dest, p), k.versions(dest, p), k.delivered(dest, p)]
        snapshot = [x for f, v in w.versions.items() for x in (f, v)] if sent else []
        args: list[str | int] = [w.email, token, now_ms, len(snapshot) // 2, *snapshot]
        args += [str(p) for p in prospects]
        return int(await SCRIPTS.aio(self.redis, "adopt")(keys=kk, args=args))

    async def release(
        self, dest: str, w: Waiting, token: str, *, due_ms: int, drop: bool = False
    ) -> bool:
        """End ``w``'s claim: due again at ``due_ms``, or (``drop``) without its snapshot."""
        k = self.keys
        kk = [
            k.email_due(dest),
            k.email_leases(dest),
            k.email_lease_tokens(dest),
            k.email_first_seen(dest),
            k.email_pending(dest, w.email),
            k.email_versions(dest, w.email),
        ]
        snapshot = [x for f, v in w.versions.items() for x in (f, v)] if drop else []
        args = [w.email, token, "drop" if drop else "defer", due_ms, *snapshot]
        return bool(await SCRIPTS.aio(self.redis, "release")(keys=kk, args=args))

    # The lookup cache --------------------------------------------------------------
    async def cached(self, dest: str, emails: Sequence[str]) -> dict[str, Matches]:
        """What is remembered of ``emails`` (an email absent: ask Outreach)."""
        if not emails:
            return {}
        keys = [self.keys.email_cache(dest, e) for e in emails]
        raws = await cast("Awaitable[list[bytes | None]]", self.redis.mget(keys))
        return {
            e: [(int(p), str(u)) for p, u in json.loads(raw)]
            for e, raw in zip(emails, raws, strict=True)
            if raw is not None
        }

    async def remember(
        self, dest: str, found: dict[str, Matches], *, found_s: int, missing_s: int
    ) -> None:
        if not found:
            return
        pipe = self.redis.pipeline(transaction=False)
        for email, matches in found.items():
            ttl = found_s if matches else missing_s
            pipe.set(self.keys.email_cache(dest, email), json.dumps(matches), ex=ttl)
        await pipe.execute()

    async def forget(self, dest: str, emails: Iterable[str]) -> None:
        names = [self.keys.email_cache(dest, e) for e in emails]
        if names:
            await cast("Awaitable[int]", self.redis.delete(*names))

    async def email_of(self, dest: str, prospect: int) -> str | None:
        """The email ``prospect`` was resolved from, if it was."""
        raw = await cast(
            "Awaitable[bytes | None]", self.redis.hget(self.keys.email_of(dest), str(prospect))
        )
        return None if raw is None else _text(raw)

    async def wait_again(
        self,
        dest: str,
        email: str,
        fields: Mapping[str, Any],
        versions: Mapping[str, int],
        *,
        now_ms: int,
    ) -> None:
        """Put ``fields`` back under ``email`` by version (newer wins), due at once."""
        changes = {email: [(f, encode(v), versions.get(f, 0)) for f, v in fields.items()]}
        op = merge_op(self.keys.for_emails(), dest, changes, now_ms=now_ms, window_ms=0)
        await run_async(self.redis, op)

    async def unlink(self, dest: str, prospect: int, email: str) -> None:
        """``prospect`` is gone (a 404): forget it and what ``email`` was resolved to."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.email_of(dest), str(prospect))
        pipe.delete(self.keys.email_cache(dest, email))
        await pipe.execute()

    # Create intents (STYLE 17) -----------------------------------------------------
    async def intents(self, dest: str, emails: Sequence[str]) -> set[str]:
        """The emails with a create intent on record (its outcome to be settled first)."""
        if not emails:
            return set()
        raws = await cast(
            "Awaitable[list[bytes | None]]",
            self.redis.hmget(self.keys.email_creates(dest), list(emails)),
        )
        return {e for e, raw in zip(emails, raws, strict=True) if raw is not None}

    async def intend(self, dest: str, email: str, token: str, *, now_ms: int, lease_ms: int) -> str:
        """Record the intent to create ``email``'s prospect: 'go', 'busy' or 'lost'."""
        kk = [self.keys.email_creates(dest), self.keys.email_lease_tokens(dest)]
        res = await SCRIPTS.aio(self.redis, "intent")(
            keys=kk, args=[email, token, now_ms, lease_ms]
        )
        return _text(res)

    async def unknown(
        self, dest: str, email: str, token: str, *, now_ms: int, state: IntentState = "unknown"
    ) -> None:
        """The create's outcome is unknown (or it was refused as already taken): the next
        attempt looks the email up first."""
        doc = json.dumps({"token": token, "ms": str(now_ms), "state": state})
        await cast("Awaitable[int]", self.redis.hset(self.keys.email_creates(dest), email, doc))

    async def no_intent(self, dest: str, email: str) -> None:
        """The create certainly made nothing (refused, 429): no lookup is owed."""
        await cast("Awaitable[int]", self.redis.hdel(self.keys.email_creates(dest), email))

    async def waiting(self, dest: str) -> tuple[int, int]:
        """(emails waiting for resolution, of which being resolved now)."""
        return await by_email.waiting(self.redis, self.keys, dest)
