"""What a drain may and may not assume about Outreach, in process on real Redis with a scripted
Outreach: an answer that never came leaves what Outreach holds unknown (no no-op skipping of
those fields afterwards); a claim that expired while its request waited is not sent; a
bisection that meets a transient error backs off instead of starting over; and the retry age
runs from the first failed attempt, not from the change's arrival."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.core.errors import Retryable
from app.outreach.client import Response
from app.store.prospects import ProspectStore, encode
from tests.scripted_outreach import D, FakeOutreach, ok, setup_destination, warm_deliverer


async def pend(store: ProspectStore, pid: int, value: str, version: int, *, at_ms: int = 0) -> None:
    now = at_ms or int(time.time() * 1000)
    await store.merge(D, {pid: [("custom1", encode(value), version)]}, now_ms=now - 10, window_ms=0)


def error(status: int, body: str = '{"errors": [{"detail": "no"}]}') -> Response:
    return Response(status, {}, body)


async def test_a_value_flipped_back_during_an_unanswered_send_still_reaches_outreach(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    # custom1 is confirmed "realized"; "exited" is sent and Outreach applies it, but the
    # answer is lost; meanwhile the audience flips back to "realized".
    settings = setup_destination(prefix, rclient)
    held: dict[str, Any] = {}
    lost_answer = {"on": False}

    async def answer(pid: int, fields: Any) -> Response:
        if pid == 1:
            held.update(fields)
        if lost_answer["on"]:
            lost_answer["on"] = False
            await pend(store, 1, "realized", 3)  # the newer evaluation, during the flight
            raise Retryable(None, "connection reset")
        return ok()

    deliverer, store = await warm_deliverer(aclient, settings, FakeOutreach(answer))
    await pend(store, 1, "realized", 1)
    await deliverer.drain(D)
    await pend(store, 1, "exited", 2)
    lost_answer["on"] = True
    await deliverer.drain(D)
    assert held == {"custom1": "exited"}  # what Outreach holds now
    rclient.zadd(settings.keys.due(D), {"1": 0})  # skip the backoff
    await deliverer.drain(D)
    assert held == {"custom1": "realized"}, "the newer value was skipped as a no-op"


async def test_a_claim_expired_while_waiting_for_a_connection_is_not_sent(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    # One connection, a short lease: prospect 1's slow answer keeps prospect 2 waiting past
    # its lease; another drain takes 2 over and delivers the newer value first.
    settings = setup_destination(
        prefix, rclient, LEASE_MS="1100", OUTREACH_TIMEOUT_S="0.1", HTTP_CONCURRENCY="1",
        CLAIM_BATCH="2",
    )  # fmt: skip
    held: dict[int, dict[str, Any]] = {}
    slow = {"once": True}
    in_flight, taken_over = asyncio.Event(), asyncio.Event()

    async def answer(pid: int, fields: Any) -> Response:
        if pid == 1 and slow["once"]:
            slow["once"] = False
            in_flight.set()
            await asyncio.wait_for(taken_over.wait(), timeout=30)
        held.setdefault(pid, {}).update(fields)
        return ok()

    outreach = FakeOutreach(answer)
    first, store = await warm_deliverer(aclient, settings, outreach)
    second, _ = await warm_deliverer(aclient, settings, outreach)
    outreach.calls.clear()
    await pend(store, 1, "realized", 1)
    await pend(store, 2, "realized", 1)

    async def takeover() -> None:
        await in_flight.wait()  # 1 is being sent; 2 is claimed, waiting for the connection
        await pend(store, 2, "exited", 2)  # a newer value, pending behind the claim
        while 2 not in held:  # another drain looks, as a dispatcher would, until 2's lease ends
            await second.drain(D)
            await asyncio.sleep(0.02)
        taken_over.set()

    stats, _ = await asyncio.gather(first.drain(D), takeover())
    assert held[2] == {"custom1": "exited"}, "a stale snapshot overwrote the newer value"
    assert [c for c in outreach.calls if c[0] == 2] == [(2, {"custom1": "exited"})]
    assert stats["lease_lost"] == 1


async def test_a_bisection_meeting_a_transient_error_backs_off(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    # A 400 naming no field starts a bisection; its halves meet a 503: nothing landed, so
    # the prospect waits out a backoff with its attempt counted, like any transient error.
    settings = setup_destination(prefix, rclient)
    keys = settings.keys

    def answer(pid: int, fields: Any) -> Response:
        return error(400) if len(fields) > 1 else error(503)

    deliverer, store = await warm_deliverer(aclient, settings, FakeOutreach(answer))
    now = int(time.time() * 1000)
    await store.merge(
        D, {5: [("custom1", encode("realized"), 1), ("firstName", encode("Ada"), 1)]},
        now_ms=now - 10, window_ms=0,
    )  # fmt: skip
    await deliverer.drain(D)
    assert rclient.hget(keys.attempts(D), "5") == b"1"
    assert int(rclient.hget(keys.failing_since(D), "5") or 0) >= now
    due = rclient.zscore(keys.due(D), "5")
    assert due is not None and due >= now + 500  # a backoff, not the next window
    assert rclient.hlen(keys.failures(D)) == 0


async def test_retry_age_runs_from_the_first_failure_not_the_arrival(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    # A change that waited two days (a long backfill, a disabled destination) and then meets
    # one 503 is retried, not turned into a dead letter at its first failure...
    settings = setup_destination(prefix, rclient, MAX_RETRY_AGE_S="3600")
    keys = settings.keys
    deliverer, store = await warm_deliverer(
        aclient, settings, FakeOutreach(lambda p, f: error(503))
    )
    two_days_ago = int(time.time() * 1000) - 2 * 86_400_000
    rclient.delete(keys.resumed(D))  # the connection was installed long ago
    await pend(store, 6, "realized", 1, at_ms=two_days_ago)
    await deliverer.drain(D)
    assert rclient.hlen(keys.failures(D)) == 0
    assert rclient.hget(keys.attempts(D), "6") == b"1"
    # ...and once it has been failing for longer than MAX_RETRY_AGE_S, it is recorded.
    rclient.hset(keys.failing_since(D), "6", two_days_ago)
    rclient.zadd(keys.due(D), {"6": 0})
    await deliverer.drain(D)
    assert rclient.hlen(keys.failures(D)) == 1
    assert not rclient.hexists(keys.failing_since(D), "6")  # gone with the dead letter


async def test_a_send_ended_by_an_exception_gives_its_permit_back_at_once(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    """An exception between the permit and Outreach's answer (here a bug in the client) does
    not keep the permit in flight until its grant expires (minutes, out of every window)."""
    settings = setup_destination(prefix, rclient)

    def answer(pid: int, fields: Any) -> Response:
        if pid == 1:
            raise RuntimeError("a bug between the permit and the answer")
        return ok()

    deliverer, store = await warm_deliverer(aclient, settings, FakeOutreach(answer))
    in_flight = f"{settings.keys.quota(f'{prefix}-user')}:grants:out"
    assert rclient.hgetall(in_flight) == {}  # the warm-up's permit was answered
    await pend(store, 1, "realized", 1)
    with pytest.raises(RuntimeError, match="a bug"):
        await deliverer.drain(D)
    assert rclient.hgetall(in_flight) == {}
