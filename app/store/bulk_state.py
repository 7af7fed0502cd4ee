"""What bulk delivery keeps in Redis: batches in flight, whether bulk is off and why, and
its figures (calls, records, requests, quota charged) for the status page."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from app.core.keys import Keys
from app.store.registry import any_destination_of

#: Figures (``Keys.bulk_state`` members) and what they count.
CALLS = "calls"  # bulk calls Outreach took
RECORDS = "records"  # prospects in those calls
DELIVERED = "delivered"  # prospects settled delivered from their batch
REQUESTS = "requests"  # every bulk request: calls, polls, item pages, cancels
CHARGED = "charged"  # quota the calls cost by Outreach's headers (1 each when unknown)
FAILURES_IN_ROW = "failures_in_row"


@dataclass(frozen=True, slots=True)
class BulkOff:
    """Bulk is off (for a destination, or every destination of a connection) until ``until_ms``."""

    scope: str  # "destination" | "connection"
    reason: str
    until_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "reason": self.reason, "until_ms": self.until_ms}


@dataclass(frozen=True, slots=True)
class InFlight:
    """A batch Outreach may still be working on, and when its tracker gives up on it."""

    batch_id: int
    connection: str
    deadline_ms: int


class BulkState:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def off(self, dest: str, conn: str, *, now_ms: int) -> BulkOff | None:
        """Why bulk may not be used now for ``dest`` (its own or its connection's refusal)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.bulk_connection(conn), ["off_until_ms", "off_reason"])
        pipe.hmget(self.keys.bulk_state(dest), ["off_until_ms", "off_reason"])
        (c_until, c_reason), (d_until, d_reason) = await pipe.execute()
        for scope, until, reason in (
            ("connection", c_until, c_reason),
            ("destination", d_until, d_reason),
        ):
            if until is not None and int(until) > now_ms:
                return BulkOff(scope, (reason or b"").decode(), int(until))
        return None

    async def turn_off(self, key: str, reason: str, *, until_ms: int) -> bool:
        """Turn bulk off at ``key`` (``Keys.bulk_state`` or ``Keys.bulk_connection``); True
        when it was on (the first to see a refusal logs it)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(key, "off_until_ms")
        pipe.hset(key, mapping={"off_until_ms": until_ms, "off_reason": reason[:300]})
        before, _ = await pipe.execute()
        return before is None or int(before) < until_ms - 1000 * 60

    async def add(self, dest: str, **figures: int) -> None:
        """Add to the destination's bulk figures."""
        pipe = self.redis.pipeline(transaction=False)
        for name, n in figures.items():
            if n:
                pipe.hincrby(self.keys.bulk_state(dest), name, n)
        await pipe.execute()

    async def batch_failed(self, dest: str) -> int:
        """Count a failed batch; returns the failures in a row."""
        key = self.keys.bulk_state(dest)
        return int(await cast("Awaitable[int]", self.redis.hincrby(key, FAILURES_IN_ROW, 1)))

    async def batch_succeeded(self, dest: str) -> None:
        await cast(
            "Awaitable[int]", self.redis.hset(self.keys.bulk_state(dest), FAILURES_IN_ROW, "0")
        )

    async def figures(self, dest: str) -> dict[str, int | str]:
        raw = await cast(
            "Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.bulk_state(dest))
        )
        out: dict[str, int | str] = {}
        for k, v in raw.items():
            text = v.decode()
            out[k.decode()] = int(text) if text.lstrip("-").isdigit() else text
        return out

    async def track(self, dest: str, flight: InFlight) -> None:
        doc = {"connection": flight.connection, "deadline_ms": flight.deadline_ms}
        key = self.keys.bulk_batches(dest)
        await cast("Awaitable[int]", self.redis.hset(key, str(flight.batch_id), json.dumps(doc)))

    async def untrack(self, dest: str, batch_id: int) -> bool:
        """Forget a batch; False when another process forgot it first (it owns its fate)."""
        key = self.keys.bulk_batches(dest)
        return bool(await cast("Awaitable[int]", self.redis.hdel(key, str(batch_id))))

    async def in_flight(self, dest: str) -> list[InFlight]:
        raw = await cast(
            "Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.bulk_batches(dest))
        )
        out = []
        for bid, doc in raw.items():
            d = json.loads(doc)
            out.append(InFlight(int(bid), str(d["connection"]), int(d["deadline_ms"])))
        return out


def cost_per_record(figures: dict[str, int | str]) -> float | None:
    """Quota spent per prospect delivered by bulk: the calls' charge plus every other bulk
    request (polls, item pages, cancels), over the records settled delivered."""
    delivered = figures.get(DELIVERED, 0)
    requests, calls, charged = (figures.get(n, 0) for n in (REQUESTS, CALLS, CHARGED))
    if not isinstance(delivered, int) or delivered <= 0:
        return None
    spent = int(charged) + int(requests) - int(calls)
    return round(spent / delivered, 4)


async def bulk_status(
    client: aioredis.Redis, keys: Keys, dest: str, conn: str, *, enabled: bool, now_ms: int
) -> dict[str, Any]:
    """The status page's view of bulk delivery: on or off (and why), and what it costs."""
    state = BulkState(client, keys)
    off = await state.off(dest, conn, now_ms=now_ms)
    figs = await state.figures(dest)
    return {
        "enabled": enabled,
        "off": None if off is None else off.as_dict(),
        **{name: int(figs.get(name, 0)) for name in (CALLS, RECORDS, DELIVERED, REQUESTS, CHARGED)},
        "cost_per_record": cost_per_record(figs),
    }


async def connection_uses_bulk(client: aioredis.Redis, keys: Keys, conn: str) -> bool:
    """Whether any destination of ``conn`` has bulk delivery on (it then needs the
    ``batches.read`` and ``batches.write`` scopes)."""

    def bulk_on(doc: dict[str, Any]) -> bool:
        bulk = doc.get("bulk")
        return isinstance(bulk, dict) and bool(bulk.get("enabled"))

    return await any_destination_of(client, keys, conn, bulk_on)
