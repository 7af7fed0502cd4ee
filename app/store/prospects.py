"""The coalescing store: pending changes per destination and prospect, kept in Redis.

All multi-key updates run as the Lua scripts in ``app/store/lua`` (atomic, one round trip).
``encode`` gives every value one canonical JSON text, so equal values compare equal in Lua.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import redis
import redis.asyncio as aioredis

from app.config.destinations import Destination
from app.core.errors import UnknownDestination, store_error
from app.core.keys import RECENT_FAILURES_KEPT, Keys
from app.core.operations import Commands, Eval, Op, run_async, run_sync
from app.core.scripts import package_scripts
from app.core.wake import wake
from app.store.counters import hour_of, write_async

#: How a claimed prospect ends: delivered, retried (counts an attempt), deferred (no
#: attempt: rate limit), or dropped (recorded as failed).
Outcome = Literal["ok", "retry", "defer", "drop"]
#: (field, encoded JSON value, version in ms)
Change = tuple[str, str, int]
#: Prospects per merge call: bounds how long one script holds Redis.
MERGE_CHUNK = 500
#: Reads of a claim's candidates before it reports nothing claimable: each look after the
#: first follows another claim that took every candidate of the one before.
CLAIM_LOOKS = 4


def encode(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


#: The store's scripts (``app/store/lua``).
SCRIPTS = package_scripts("app.store")


def effective_window_ms(destination: Destination, default_ms: int) -> int:
    """How long ``destination`` gathers a prospect's changes: its own ``coalesce_window_ms``,
    else the deployment's (``Settings.coalesce_window_ms``)."""
    own = destination.coalesce_window_ms
    return default_ms if own is None else own


@dataclass(frozen=True, slots=True)
class MergeResult:
    newly_due: int = 0
    applied: int = 0
    stale: int = 0

    def __add__(self, other: MergeResult) -> MergeResult:
        return MergeResult(
            self.newly_due + other.newly_due,
            self.applied + other.applied,
            self.stale + other.stale,
        )


@dataclass(frozen=True, slots=True)
class Claimed:
    prospect: int
    first_seen_ms: int
    attempts: int
    fields: dict[str, Any]
    #: ms of the first failed attempt since the last delivery (0: none failed yet).
    failing_since_ms: int = 0


@dataclass(frozen=True, slots=True)
class Poll:
    ready: int
    next_ms: int | None
    new_slots: tuple[str, ...]


def parse_poll(res: list[Any]) -> Poll:
    nxt = int(res[1])
    return Poll(int(res[0]), None if nxt < 0 else nxt, tuple(str(int(s)) for s in res[2:]))


def poll_sync(
    client: redis.Redis,
    keys: Keys,
    dest: str,
    *,
    now_ms: int,
    batch: int,
    max_drainers: int,
    slot_ttl_ms: int,
) -> Poll:
    """The dispatcher's look at a destination (see ``lua/poll.lua``)."""
    script = SCRIPTS.sync(client, "poll")
    seq = keys.drainer_seq(dest)
    kk = [keys.due(dest), keys.leases(dest), keys.drainers(dest), keys.hold(dest), seq]
    kk += [keys.enroll_due(dest), keys.enroll_pause(dest)]
    # Emails waiting for resolution fall due like prospects: a drain resolves them first.
    kk += [keys.email_due(dest), keys.email_leases(dest)]
    res = script(keys=kk, args=[now_ms, batch, max_drainers, slot_ttl_ms])
    return parse_poll(res)


def _parse_claimed(flat: Sequence[Any]) -> list[Claimed]:
    out: list[Claimed] = []
    i = 0
    while i < len(flat):
        pid, first, attempts, failing, n = (int(x) for x in flat[i : i + 5])
        pairs = flat[i + 5 : i + 5 + 2 * n]
        fields = {pairs[j].decode(): json.loads(pairs[j + 1]) for j in range(0, 2 * n, 2)}
        out.append(Claimed(pid, first, attempts, fields, failing))
        i += 5 + 2 * n
    return out


#: What the merge keys pending state by: a prospect id, or an email (``Keys.for_emails``).
P = TypeVar("P", int, str)


def _merge_call(
    keys: Keys,
    dest: str,
    chunk: Sequence[tuple[P, Sequence[Change]]],
    now_ms: int,
    window_ms: int,
) -> tuple[list[str], list[str | int]]:
    kk = [keys.due(dest), keys.leases(dest), keys.first_seen(dest), keys.counters(dest)]
    kk.append(keys.retired(dest))
    for prospect, _ in chunk:
        kk += [keys.pending(dest, prospect), keys.versions(dest, prospect)]
    # Ids and times as strings: Lua's cjson reads numbers as doubles (inexact past 2^53).
    doc = [
        [str(prospect), [[field, value, str(ts)] for field, value, ts in changes]]
        for prospect, changes in chunk
    ]
    payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return kk, [now_ms, window_ms, dest, payload]


def _chunks(
    changes: Mapping[P, Sequence[Change]],
) -> Iterable[Sequence[tuple[P, Sequence[Change]]]]:
    items = [(p, c) for p, c in changes.items() if c]
    for start in range(0, len(items), MERGE_CHUNK):
        yield items[start : start + MERGE_CHUNK]


def merge_op(
    keys: Keys,
    dest: str,
    changes: Mapping[P, Sequence[Change]],
    *,
    now_ms: int,
    window_ms: int,
) -> Op[MergeResult]:
    """Merge changes into the pending state (``lua/merge.lua``, a chunk of prospects per
    call) and wake the dispatchers when some prospect newly fell pending."""
    total = MergeResult()
    try:
        # The catalog is another cluster slot than the destination's keys: asked first, and
        # merge.lua refuses a destination deleted since (its retired marker).
        chunks = list(_chunks(changes))
        if chunks:
            [known] = yield Commands(lambda pipe: pipe.hexists(keys.destinations(), dest))
            if not known:
                raise UnknownDestination(dest)
        for chunk in chunks:
            kk, args = _merge_call(keys, dest, chunk, now_ms, window_ms)
            total += MergeResult(*(yield Eval(SCRIPTS, "merge", kk, args)))
        if total.newly_due:
            yield from wake(keys, dest)
    except redis.RedisError as exc:
        raise _merge_error(dest, exc) from exc
    return total


def merge_sync(
    client: redis.Redis,
    keys: Keys,
    dest: str,
    changes: Mapping[P, Sequence[Change]],
    *,
    now_ms: int,
    window_ms: int,
) -> MergeResult:
    """``merge_op`` for a synchronous producer (CLI, Python API, Celery task, replay)."""
    return run_sync(client, merge_op(keys, dest, changes, now_ms=now_ms, window_ms=window_ms))


def _merge_error(dest: str, exc: redis.RedisError) -> Exception:
    """What a failed merge means: the destination is gone (merge.lua's NODEST), or Redis."""
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("NODEST"):
        return UnknownDestination(dest)
    return store_error(exc)


class ProspectStore:
    """Async adapter used by the HTTP API and the workers."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def merge(
        self, dest: str, changes: Mapping[int, Sequence[Change]], *, now_ms: int, window_ms: int
    ) -> MergeResult:
        """``merge_op`` for the HTTP API."""
        op = merge_op(self.keys, dest, changes, now_ms=now_ms, window_ms=window_ms)
        return await run_async(self.redis, op)

    def _dest_keys(self, dest: str) -> list[str]:
        k = self.keys
        return [
            k.due(dest),
            k.leases(dest),
            k.lease_tokens(dest),
            k.first_seen(dest),
            k.counters(dest),
            k.attempts(dest),
            k.failing_since(dest),
        ]

    async def claim(
        self, dest: str, *, now_ms: int, lease_ms: int, batch: int, token: str
    ) -> list[Claimed]:
        """Claim up to ``batch`` due prospects (``lua/claim.lua``). The candidates are read
        first so the script can declare their keys; when other claims took every one of them
        meanwhile, it looks again (a few times) rather than report nothing due."""
        hour = self.keys.metrics_hour(dest, hour_of(now_ms / 1000))
        for _ in range(CLAIM_LOOKS):
            expired, due = await self._candidates(dest, now_ms=now_ms, batch=batch)
            if not expired and not due:
                return []
            seen = set(expired)
            candidates = [*expired, *(p for p in due if p not in seen)]
            ttl_s = self.keys.metrics_ttl_s()
            flat = await SCRIPTS.aio(self.redis, "claim")(
                keys=[*self._dest_keys(dest), hour, *self._snapshot_keys(dest, candidates)],
                args=[now_ms, lease_ms, batch, token, ttl_s, len(expired), *candidates],
            )
            claimed = _parse_claimed(flat[1:])
            if claimed or not int(flat[0]):
                return claimed
        return []

    async def _candidates(self, dest: str, *, now_ms: int, batch: int) -> tuple[list[int], ...]:
        """Prospects whose lease expired, and prospects due, at ``now_ms`` (``batch`` each)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(self.keys.leases(dest), "-inf", now_ms, start=0, num=batch)
        pipe.zrangebyscore(self.keys.due(dest), "-inf", now_ms, start=0, num=batch)
        expired, due = await pipe.execute()
        return [int(p) for p in expired], [int(p) for p in due]

    async def renew(self, dest: str, prospect: int, token: str, *, until_ms: int) -> bool:
        """Extend the claim on ``prospect`` to ``until_ms`` if it is still ``token``'s."""
        kk = [self.keys.leases(dest), self.keys.lease_tokens(dest)]
        renew = SCRIPTS.aio(self.redis, "renew")
        return bool(await renew(keys=kk, args=[prospect, token, until_ms]))

    async def renew_many(
        self, dest: str, prospects: Sequence[int], token: str, *, until_ms: int
    ) -> set[int]:
        """Extend the claims on ``prospects`` still ``token``'s; returns those renewed."""
        kk = [self.keys.leases(dest), self.keys.lease_tokens(dest)]
        renew_many = SCRIPTS.aio(self.redis, "renew_many")
        renewed = await renew_many(keys=kk, args=[token, until_ms, *prospects])
        return {int(p) for p in renewed}

    async def settle_delivered(
        self, dest: str, prospects: Sequence[int], token: str, *, now_ms: int, window_ms: int
    ) -> set[int]:
        """End the claims on ``prospects`` as delivered, every field of each snapshot (a bulk
        batch's records), in one round trip; returns those settled (still ``token``'s)."""
        if not prospects:
            return set()
        args: list[str | int] = [token, now_ms, window_ms, *prospects]
        kk = [*self._dest_keys(dest), *self._snapshot_keys(dest, prospects)]
        settle_ok_many = SCRIPTS.aio(self.redis, "settle_ok_many")
        return {int(p) for p in await settle_ok_many(keys=kk, args=args)}

    def _snapshot_keys(self, dest: str, prospects: Iterable[int | bytes]) -> list[str]:
        """Per prospect its in-flight, pending and delivered hashes, in that order."""
        k = self.keys
        out: list[str] = []
        for p in prospects:
            pid = int(p)
            out += [k.inflight(dest, pid), k.pending(dest, pid), k.delivered(dest, pid)]
        return out

    async def settle(
        self,
        dest: str,
        prospect: int,
        token: str,
        outcome: Outcome,
        *,
        now_ms: int,
        window_ms: int,
        due_ms: int = 0,
        fields: Iterable[str] = (),
    ) -> bool:
        """End a claim. ``fields``: for "ok" those delivered; for "retry"/"defer" those
        dropped (failed on their own) rather than returned to pending."""
        k = self.keys
        kk = [
            *self._dest_keys(dest),
            k.inflight(dest, prospect),
            k.pending(dest, prospect),
            k.delivered(dest, prospect),
            k.metrics_hour(dest, hour_of(now_ms / 1000)),
        ]
        ttl = k.metrics_ttl_s()
        args = [prospect, token, now_ms, window_ms, outcome, due_ms, ttl, *fields]
        return bool(await SCRIPTS.aio(self.redis, "settle")(keys=kk, args=args))

    async def hold(self, dest: str, until_ms: int, *, now_ms: int) -> None:
        """Start no drain for ``dest`` before ``until_ms`` (the quota is spent until then)."""
        ttl = max(1, until_ms - now_ms) + 1000
        await cast("Awaitable[bool]", self.redis.set(self.keys.hold(dest), until_ms, px=ttl))

    async def resumed_ms(self, dest: str) -> int:
        """When the destination's connection was last (re)installed (0: never recorded)."""
        raw = await cast("Awaitable[bytes | None]", self.redis.get(self.keys.resumed(dest)))
        return int(raw) if raw else 0

    async def release_slot(self, dest: str, slot: str) -> None:
        await cast("Awaitable[int]", self.redis.zrem(self.keys.drainers(dest), slot))

    async def count(self, dest: str, **increments: int) -> None:
        """Add to the destination's dataflow totals and this hour's counts (counters.py)."""
        await write_async(self.redis, self.keys, dest, increments)

    async def failed_versions(self, dest: str, prospect: int, fields: list[str]) -> dict[str, int]:
        """Versions of claimed fields that failed, for a replay that obeys newer-wins. A
        field with a pending value was superseded during the flight: the version on record
        is the newer change's, so it is left out (a replay then counts as the oldest)."""
        if not fields:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.versions(dest, prospect), fields)
        pipe.hmget(self.keys.pending(dest, prospect), fields)
        versions, pending = await pipe.execute()
        return {
            f: int(v)
            for f, v, p in zip(fields, versions, pending, strict=True)
            if v is not None and p is None
        }

    async def invalid_mappings(self, dest: str) -> set[int]:
        raw = await cast(
            "Awaitable[set[bytes]]", self.redis.smembers(self.keys.invalid_mappings(dest))
        )
        return {int(m) for m in raw}

    async def mark_invalid_mapping(self, dest: str, mapping_id: int) -> bool:
        """True when newly marked (the first worker to see it alerts)."""
        key = self.keys.invalid_mappings(dest)
        return bool(await cast("Awaitable[int]", self.redis.sadd(key, mapping_id)))

    async def forget_delivered(self, dest: str, prospect: int, fields: Iterable[str]) -> None:
        """What Outreach holds for ``fields`` is unknown (sent, no answer): no later value of
        them is skipped as a no-op."""
        names, key = list(fields), self.keys.delivered(dest, prospect)
        if names:
            await cast("Awaitable[int]", self.redis.hdel(key, *names))

    async def drop_inflight(self, dest: str, prospect: int, fields: Iterable[str]) -> None:
        """Remove fields from a claimed prospect's snapshot (they were failed on their own)."""
        await cast("Awaitable[int]", self.redis.hdel(self.keys.inflight(dest, prospect), *fields))

    async def record_failure(self, dest: str, failure_id: str, record: dict[str, Any]) -> None:
        """Store a dead letter and index it among the destination's recent failures (capped
        at ``RECENT_FAILURES_KEPT``), in one round trip."""
        recent = self.keys.failures_recent(dest)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.failures(dest), failure_id, json.dumps(record))
        pipe.zadd(recent, {failure_id: int(record.get("at_ms") or 0)})
        pipe.zremrangebyrank(recent, 0, -RECENT_FAILURES_KEPT - 1)
        await pipe.execute()

    async def counters(self, dest: str) -> dict[str, int]:
        raw = await cast(
            "Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.counters(dest))
        )
        return {k.decode(): int(v) for k, v in raw.items()}

    async def backlog(self, dest: str) -> tuple[int, int]:
        """(prospects pending, prospects in flight)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.due(dest))
        pipe.zcard(self.keys.leases(dest))
        due, flying = await pipe.execute()
        return int(due), int(flying)
