"""A drain's counts, in process on real Redis with a scripted Outreach: every concurrent send
is counted even when one raises, a bisection counts what it delivered and the 429 it met, and
the worker task counts a drain that raised. Worker-side series: prospects apart from fields."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.outreach.client import Response
from tests.scripted_outreach import D, FakeOutreach, ok, pending, setup_destination, warm_deliverer
from tests.support import counts


async def test_one_send_raising_still_counts_every_concurrent_send(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    settings = setup_destination(prefix, rclient)

    async def answer(prospect: int, fields: Mapping[str, Any]) -> Response:
        if prospect == 1:
            raise RuntimeError("a bug in one send")
        await asyncio.sleep(0.2)  # the others are still in flight when it raises
        return ok()

    deliverer, store = await warm_deliverer(aclient, settings, FakeOutreach(answer))
    await pending(store, {p: {"custom1": "realized"} for p in range(1, 6)})
    stats: Counter[str] = Counter()
    with pytest.raises(RuntimeError):
        await deliverer.drain(D, stats=stats)
    counters = counts(rclient, settings.keys, D)
    # Written once every send had ended: the four that landed are in the totals.
    assert counters["drain_delivered"] == stats["delivered"] == 4
    assert counters["drain_requests"] == stats["requests"] == 5
    await asyncio.sleep(0.3)
    assert counts(rclient, settings.keys, D)["drain_delivered"] == 4


async def test_bisection_counts_the_activated_prospect_and_holds_on_a_429(
    prefix: str, rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    settings = setup_destination(prefix, rclient)

    def answer(prospect: int, fields: Mapping[str, Any]) -> Response:
        if len(fields) == 3:  # the whole PATCH: refused, no field named
            return Response(400, {}, '{"errors": [{"title": "Validation Error"}]}')
        if set(fields) == {"custom1"}:
            return ok()
        return Response(429, {"Retry-After": "30"}, "")

    deliverer, store = await warm_deliverer(aclient, settings, FakeOutreach(answer))
    fields = {"custom1": "realized", "custom7": "exited", "firstName": "Ada"}
    await pending(store, {42: fields})
    before_s = time.time()
    stats = await deliverer.drain(D)
    counters = counts(rclient, settings.keys, D)
    assert stats["delivered"] == counters["drain_delivered"] == 1
    assert stats["error_ratelimited"] == counters["drain_error_ratelimited"] == 1
    assert counters["m1:activated:realized"] == counters["activated:fields"] == 1
    assert counters["drain_requests"] == 3
    # The destination waits for the reset Outreach named, as after a whole PATCH's 429.
    hold = rclient.get(settings.keys.hold(D))
    assert hold is not None and int(hold) >= int((before_s + 29) * 1000)
    # The undelivered fields are pending again; nothing became a dead letter.
    assert set(rclient.hgetall(settings.keys.pending(D, 42))) == {b"custom7", b"firstName"}
    assert rclient.hlen(settings.keys.failures(D)) == 0


def test_the_drain_task_counts_a_drain_that_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import tasks

    class Deliverer:
        async def drain(
            self, dest_id: str, slot: str | None = None, *, stats: Counter[str]
        ) -> Counter[str]:
            stats.update(claimed=3, delivered=2, requests=3)
            raise RuntimeError("Redis went away")

    class Runtime:
        deliverer = Deliverer()

        def run(self, coro: Any) -> Any:
            return asyncio.run(coro)

    recorded: list[tuple[str, dict[str, int]]] = []
    monkeypatch.setattr(tasks, "get_runtime", Runtime)
    monkeypatch.setattr(
        tasks, "record_drain", lambda dest, stats, _s: recorded.append((dest, dict(stats)))
    )
    with pytest.raises(RuntimeError):
        tasks.drain.run("dX")
    assert recorded == [("dX", {"claimed": 3, "delivered": 2, "requests": 3})]


def test_worker_series_keep_fields_and_bisection_requests_out_of_prospects() -> None:
    from prometheus_client import REGISTRY

    from workers.prometheus import record_drain

    dest = f"d-{time.monotonic_ns()}"
    record_drain(
        dest,
        {
            "claimed": 2,
            "delivered": 2,
            "requests": 5,
            "bisect_requests": 2,
            "fields_isolated": 1,
            "fields_invalid_mapping": 3,
            "m1:activated:realized": 2,
        },
        0.1,
    )

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"destination": dest, **labels})

    prospects = "outreach_sync_worker_prospects_total"
    assert value(prospects, outcome="delivered") == 2
    for outcome in ("bisect_requests", "fields_isolated", "fields_invalid_mapping"):
        assert value(prospects, outcome=outcome) is None
    assert value("outreach_sync_worker_bisect_requests_total") == 2
    assert value("outreach_sync_worker_fields_total", outcome="isolated") == 1
    assert value("outreach_sync_worker_fields_total", outcome="invalid_mapping") == 3
