from __future__ import annotations

import asyncio
import gc
import multiprocessing
import random
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import redis
import redis.asyncio

from app.core.keys import Keys
from app.outreach.answers import Answer, parse_answer
from app.ratelimit.gate import PROBE_TIMEOUT_S, Grant, QuotaGate, QuotaLimits, QuotaUnavailable
from tests.support import TEST_REDIS_URL as REDIS_URL
from tests.support import TEST_STORAGE_URI as STORAGE_URI
from tests.support import free_port

USER = "user-1"

MakeGate = Callable[..., QuotaGate]


def reply(
    status: int, headers: Mapping[str, str], body: str | None, *, fallback_pause_s: float = 60.0
) -> Answer:
    """An Outreach answer, parsed as the drain parses it (status 0: no answer came)."""
    return parse_answer(status, headers, body, fallback_pause_s=fallback_pause_s)


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"rltest:{uuid.uuid4().hex}"
    yield value
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{value}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
async def make_gate(prefix: str) -> AsyncIterator[MakeGate]:
    """Gates with their own Redis clients, as separate processes would have."""
    made: list[tuple[QuotaGate, redis.asyncio.Redis]] = []

    def make(**kwargs: Any) -> QuotaGate:
        # Most tests here exercise our own window from a cold start; the cold-start probe
        # (the default) has tests of its own below.
        kwargs.setdefault("probe_first", False)
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        gate = QuotaGate(client, storage_uri=STORAGE_URI, prefix=prefix, **kwargs)
        made.append((gate, client))
        return gate

    yield make
    for gate, client in made:
        await gate.aclose()
        await client.aclose()


async def _hammer(gate: QuotaGate, calls: int, limit: str, seed: int) -> int:
    rng = random.Random(seed)
    total = 0
    for _ in range(calls):
        want = rng.randint(1, 7)
        grant = await gate.acquire(USER, want, limit=limit)
        assert 0 <= grant.granted <= want
        # Permits come named, to report their answers; a refusal says how long to wait.
        assert bool(grant.id) == (grant.granted > 0)
        assert grant.granted > 0 or grant.wait_s > 0
        total += grant.granted
    return total


async def test_grants_exactly_the_limit_then_waits_at_most_the_window(make_gate: MakeGate) -> None:
    gate = make_gate()
    limit = "20 per 2 seconds"
    first, second = [await gate.acquire(USER, 15, limit=limit) for _ in range(2)]
    assert (first.granted, first.wait_s, second.granted, second.wait_s) == (15, 0.0, 5, 0.0)
    assert first.id and second.id and first.id != second.id  # each grant is named
    refused = await gate.acquire(USER, 1, limit=limit)
    assert refused.granted == 0 and refused.id == ""
    assert 0 < refused.wait_s <= 2.0
    state = await gate.state(USER, limit=limit)
    assert (state.limit, state.used, state.remaining) == (20, 20, 0)

    await asyncio.sleep(refused.wait_s + 0.05)
    assert (await gate.acquire(USER, 20, limit=limit)).granted >= 15


async def test_one_batch_larger_than_the_limit_gets_the_limit(make_gate: MakeGate) -> None:
    gate = make_gate()
    assert (await gate.acquire(USER, 50, limit="20 per 2 seconds")).granted == 20
    assert (await gate.acquire("someone-else", 50, limit="20 per 2 seconds")).granted == 20


async def test_concurrent_gates_never_exceed_the_limit(make_gate: MakeGate) -> None:
    limit = "100 per 10 seconds"
    gates = [make_gate() for _ in range(6)]
    totals = await asyncio.gather(
        *(_hammer(gate, 40, limit, seed) for seed, gate in enumerate(gates))
    )
    assert sum(totals) == 100
    assert (await gates[0].state(USER, limit=limit)).used == 100


def _process_main(prefix: str, limit: str, seed: int, barrier: Any, out: Any) -> None:
    async def run() -> int:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        gate = QuotaGate(client, storage_uri=STORAGE_URI, prefix=prefix, probe_first=False)
        try:
            return await _hammer(gate, 60, limit, seed)
        finally:
            await gate.aclose()
            await client.aclose()

    barrier.wait(timeout=30)
    out.put(asyncio.run(run()))


def test_separate_processes_never_exceed_the_limit(prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    limit = "150 per 30 seconds"
    procs = [
        ctx.Process(target=_process_main, args=(prefix, limit, seed, barrier, out))
        for seed in range(3)
    ]
    for proc in procs:
        proc.start()
    totals = [out.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    assert sum(totals) == 150
    assert all(total > 0 for total in totals)


async def test_reserve_share_is_kept_unused(make_gate: MakeGate) -> None:
    gate = make_gate()
    limit = "20 per 5 seconds"
    assert (await gate.acquire(USER, 100, limit=limit, reserve_share=0.25)).granted == 15
    refused = await gate.acquire(USER, 1, limit=limit, reserve_share=0.25)
    assert refused.granted == 0
    assert 0 < refused.wait_s <= 5.0
    assert (await gate.acquire(USER, 100, limit=limit)).granted == 5
    with pytest.raises(ValueError):
        await gate.acquire(USER, 1, limit=limit, reserve_share=0.6)


async def test_lower_server_remaining_caps_every_gate_until_its_reset(make_gate: MakeGate) -> None:
    a, b = make_gate(), make_gate()
    limit = "100 per 10 seconds"
    reset = time.time() + 1.5
    headers = {"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": repr(reset)}
    assert await a.observe(USER, reply(200, headers, None)) is None
    # Below the careful reserve (10% of 100) requests go one at a time: a grant only after
    # the answer to the previous one, and together never more than the server has left.
    grants = [await g.acquire(USER, 10, limit=limit) for g in (a, b, a)]
    assert [g.granted for g in grants] == [1, 0, 0]
    single = grants[0]
    for left in (4, 3, 2, 1):
        answer = {"X-RateLimit-Remaining": str(left), "X-RateLimit-Reset": repr(reset)}
        await b.observe(USER, reply(200, answer, None), sent_s=time.time(), grant=single.id)
        single = await (a if left % 2 else b).acquire(USER, 10, limit=limit)
        assert single.granted == 1
    spent = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": repr(reset)}
    await a.observe(USER, reply(200, spent, None), sent_s=time.time(), grant=single.id)
    refused = await a.acquire(USER, 1, limit=limit)
    assert refused.granted == 0
    assert 0 < refused.wait_s <= 1.5
    state = await b.state(USER, limit=limit)
    assert (state.used, state.server_remaining, state.server_reset_s) == (5, 0, reset)

    # After the reset: one probe, then nothing until its answer brings a fresh report.
    await asyncio.sleep(reset - time.time() + 0.05)
    probe = await b.acquire(USER, 10, limit=limit)
    assert probe.granted == 1
    assert (await a.acquire(USER, 10, limit=limit)).granted == 0
    fresh = {"X-RateLimit-Remaining": "40", "X-RateLimit-Reset": repr(time.time() + 5)}
    await b.observe(USER, reply(200, fresh, None), sent_s=time.time(), grant=probe.id)  # its answer
    assert (await a.acquire(USER, 10, limit=limit)).granted == 10
    assert (await b.state(USER, limit=limit)).server_remaining == 30


async def test_a_cold_start_probes_once_before_a_burst(make_gate: MakeGate) -> None:
    """Nothing known of the user yet: one request goes first; its answer's figure governs
    (another integration had already spent most of the window)."""
    a, b = make_gate(probe_first=True), make_gate(probe_first=True)
    limit = "100 per 10 seconds"
    probe = await a.acquire(USER, 30, limit=limit)
    assert probe.granted == 1
    waiting = await b.acquire(USER, 30, limit=limit)
    assert waiting.granted == 0 and waiting.wait_s <= 0.1  # the probe's answer is near
    reset = repr(time.time() + 8)
    answer = {"X-RateLimit-Remaining": "20", "X-RateLimit-Reset": reset}
    await a.observe(USER, reply(200, answer, None), sent_s=time.time(), grant=probe.id)
    # 20 left at the server, less the careful reserve (10% of 100): 10, not our 99.
    assert (await b.acquire(USER, 30, limit=limit)).granted == 10


async def test_a_server_that_reports_nothing_is_probed_once_then_own_window(
    make_gate: MakeGate,
) -> None:
    gate = make_gate(probe_first=True)
    limit = "20 per 10 seconds"
    probe = await gate.acquire(USER, 10, limit=limit)
    assert probe.granted == 1
    await gate.observe(USER, reply(0, {}, None), sent_s=time.time(), grant=probe.id)  # no answer
    probe = await gate.acquire(USER, 10, limit=limit)  # so it probes again
    assert probe.granted == 1
    await gate.observe(USER, reply(200, {}, None), sent_s=time.time(), grant=probe.id)  # no figure
    assert (await gate.acquire(USER, 30, limit=limit)).granted == 18  # 20 less the 2 probes


async def test_higher_server_remaining_does_not_lift_our_limit(make_gate: MakeGate) -> None:
    gate = make_gate()
    headers = {"X-RateLimit-Remaining": "1000", "X-RateLimit-Reset": "60"}
    await gate.observe(USER, reply(200, headers, None))
    assert (await gate.acquire(USER, 50, limit="10 per 10 seconds")).granted == 10


async def test_reports_of_one_window_keep_the_lowest_and_a_new_window_replaces(
    make_gate: MakeGate,
) -> None:
    gate = make_gate()
    limit = "100 per 10 seconds"
    reset = repr(time.time() + 30)
    await gate.observe(
        USER, reply(200, {"X-RateLimit-Remaining": "40", "X-RateLimit-Reset": reset}, "")
    )
    four = await gate.acquire(USER, 4, limit=limit)
    assert four.granted == 4
    # The answer to one of our 4: the other 3 are still in flight and may not be counted yet.
    answer = {"X-RateLimit-Remaining": "39", "X-RateLimit-Reset": reset}
    await gate.observe(USER, reply(200, answer, ""), sent_s=time.time(), grant=four.id)
    assert (await gate.state(USER, limit=limit)).server_remaining == 36
    # Spent freely down to the careful reserve (10 of 100), then one at a time.
    assert (await gate.acquire(USER, 100, limit=limit)).granted == 26
    later = repr(time.time() + 60)
    await gate.observe(
        USER, reply(200, {"X-RateLimit-Remaining": "50", "X-RateLimit-Reset": later}, "")
    )
    # A newer window replaces the figure; our 3 + 26 requests still in flight still count.
    assert (await gate.state(USER, limit=limit)).server_remaining == 50 - 29


async def test_server_budget_counts_exactly_what_was_granted_under_races(
    make_gate: MakeGate,
) -> None:
    limit = "40 per 10 seconds"
    gates = [make_gate() for _ in range(6)]
    headers = {"X-RateLimit-Remaining": "60", "X-RateLimit-Reset": "30"}
    await gates[0].observe(USER, reply(200, headers, None))
    totals = await asyncio.gather(*(_hammer(g, 30, limit, seed) for seed, g in enumerate(gates)))
    # Usually all 40 of the window; on a loaded machine the burst can outlast the report's
    # freshness (FRESH_SHARE of the window), and the gates then go one probe at a time (no
    # answer comes here): fewer, never more, and the server's count still matches exactly.
    granted = sum(totals)
    assert 0 < granted <= 40
    assert (await gates[0].state(USER, limit=limit)).server_remaining == 60 - granted


async def test_429_pauses_every_gate_until_the_reset(make_gate: MakeGate) -> None:
    a, b, c = make_gate(), make_gate(), make_gate()
    limit = "20 per 2 seconds"
    assert (await b.acquire(USER, 1, limit=limit)).granted == 1
    until = await a.observe(USER, reply(429, {"Retry-After": "1"}, '{"errors":[]}'))
    assert until is not None
    assert until == pytest.approx(time.time() + 1, abs=0.2)
    for gate in (a, b, c):
        refused = await gate.acquire(USER, 1, limit=limit)
        assert refused.granted == 0
        assert 0 < refused.wait_s <= 1.0
    assert (await c.state(USER, limit=limit)).paused_until_s == until

    await asyncio.sleep(until - time.time() + 0.02)
    for gate in (a, b, c):
        assert (await gate.acquire(USER, 1, limit=limit)).granted == 1
    assert (await a.state(USER, limit=limit)).paused_until_s is None


async def test_pauses_only_extend(make_gate: MakeGate) -> None:
    a, b = make_gate(), make_gate()
    now = time.time()
    await a.pause(USER, now + 2)
    assert await b.observe(USER, reply(429, {"Retry-After": "1"}, None)) == now + 2
    await b.pause(USER, now + 1.5)
    assert (await a.state(USER)).paused_until_s == now + 2
    await b.pause(USER, now + 3)
    assert (await a.state(USER)).paused_until_s == now + 3
    assert 2.5 < (await a.acquire(USER, 1)).wait_s <= 3.0


async def test_429_without_any_time_pauses_for_the_fallback(make_gate: MakeGate) -> None:
    gate = make_gate(fallback_pause_s=2.0)
    until = await gate.observe(USER, reply(429, {}, "Retry later", fallback_pause_s=2.0))
    assert until == pytest.approx(time.time() + 2.0, abs=0.2)
    assert 1.5 < (await gate.acquire(USER, 1)).wait_s <= 2.0


async def test_keys_live_under_the_user_namespace(make_gate: MakeGate, prefix: str) -> None:
    gate = make_gate()
    await gate.acquire(USER, 1)
    await gate.observe(
        USER, reply(200, {"X-RateLimit-Remaining": "9", "X-RateLimit-Reset": "60"}, None)
    )
    await gate.pause(USER, time.time() + 5)
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*"))
    ns = Keys(prefix).quota(USER)
    grants = [f"{ns}:grants", f"{ns}:grants:out"]
    assert keys == [*grants, f"{ns}:pause", f"{ns}:server", f"{ns}:window/10000/1/hour"]


async def test_zero_and_negative_wants(make_gate: MakeGate) -> None:
    gate = make_gate()
    assert await gate.acquire(USER, 0) == Grant(0, 0.0)
    with pytest.raises(ValueError):
        await gate.acquire(USER, -1)


async def test_closing_the_callers_client_closes_everything(prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    gate = QuotaGate(client, storage_uri=STORAGE_URI, prefix=prefix, probe_first=False)
    assert (await gate.acquire(USER, 2)).granted == 2
    assert (await gate.state(USER)).used == 2
    await client.aclose()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del gate
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_redis_errors_are_wrapped() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = redis.asyncio.Redis.from_url(nowhere)
    gate = QuotaGate(client, storage_uri=f"async+{nowhere}", prefix="rltest:down")
    try:
        calls = [
            gate.acquire(USER, 1),
            gate.observe(USER, reply(429, {}, None)),
            gate.pause(USER, time.time() + 1),
            gate.state(USER),
            gate.refund(USER, "some-grant", 1),
        ]
        for call in calls:
            with pytest.raises(QuotaUnavailable) as info:
                await call
            assert info.value.user == USER
            assert info.value.__cause__ is not None
    finally:
        await gate.aclose()
        await client.aclose()


async def test_a_part_takes_at_most_its_share_and_unused_permits_come_back(
    make_gate: MakeGate,
) -> None:
    gates = [make_gate() for _ in range(4)]
    limit = "20 per 10 seconds"  # a share of 0.5 is 10 permits
    taken = await asyncio.gather(
        *(g.take_share(USER, "big", 4, limit=limit, share=0.5) for g in gates)
    )
    assert sum(grant.granted for grant, _ in taken) == 10  # racing takers never overshoot
    refused, _ = await gates[0].take_share(USER, "big", 1, limit=limit, share=0.5)
    assert refused.granted == 0 and 0 < refused.wait_s <= 10
    other, _ = await gates[0].take_share(USER, "small", 10, limit=limit, share=0.5)
    assert other.granted == 10  # each part has its own share
    grant, token = next((g, t) for g, t in taken if g.granted >= 2)
    await gates[1].refund_share(USER, "big", token, grant.granted, grant.granted - 2)
    again, _ = await gates[2].take_share(USER, "big", 5, limit=limit, share=0.5)
    assert again.granted == 2  # exactly what was given back


# Grants in flight heal themselves: a grant nobody answers stops counting after its hold.

HOLD_S = 0.6


def _report(remaining: int, reset: float, limit: int = 100) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": repr(reset),
    }


async def _in_flight(prefix: str) -> dict[str, int]:
    """The permits still out per grant, as stored (the grants that expired included)."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        raw = await client.hgetall(f"{Keys(prefix).quota(USER)}:grants:out")
    finally:
        await client.aclose()
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_a_grant_never_answered_stops_counting_after_its_hold(
    make_gate: MakeGate,
) -> None:
    """A worker killed mid-drain never answers its 50 permits: once their hold has passed
    the next window is the server's whole figure again, not 50 less for good."""
    gate = make_gate(grant_hold_s=HOLD_S)
    limit = "100 per 60 seconds"
    await gate.observe(USER, reply(200, _report(100, time.time() + 30), None))
    lost = await gate.acquire(USER, 50, limit=limit)
    assert lost.granted == 50
    # While the grant may still be answered, its permits count as in flight.
    assert (await gate.state(USER, limit=limit)).server_remaining == 50
    await asyncio.sleep(HOLD_S + 0.1)
    # The next window: Outreach reports its whole allowance again.
    await gate.observe(USER, reply(200, _report(100, time.time() + 60), None))
    assert (await gate.state(USER, limit=limit)).server_remaining == 100
    # Spent freely down to the careful reserve (10% of 100): 90, where the leak left 40.
    assert (await gate.acquire(USER, 100, limit=limit)).granted == 90


def _hold_grant(prefix: str, started: Any, go: Any) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        gate = QuotaGate(client, storage_uri=STORAGE_URI, prefix=prefix, grant_hold_s=1.0)
        started.put("ready")
        await asyncio.to_thread(go.get, timeout=30)
        grant = await gate.acquire(USER, 50, limit="100 per 60 seconds")
        started.put(grant.granted)
        await asyncio.sleep(60)  # "sending": killed before any answer

    asyncio.run(run())


async def test_permits_of_a_killed_worker_come_back(make_gate: MakeGate, prefix: str) -> None:
    gate = make_gate(grant_hold_s=1.0)
    limit = "100 per 60 seconds"
    ctx = multiprocessing.get_context("spawn")
    started, go = ctx.Queue(), ctx.Queue()
    worker = ctx.Process(target=_hold_grant, args=(prefix, started, go))
    worker.start()
    try:
        # A report fresher than FRESH_MAX_S when the worker asks, however slow its start:
        # an older one would be probed first (a grant of 1).
        assert await asyncio.to_thread(started.get, timeout=30) == "ready"
        await gate.observe(USER, reply(200, _report(100, time.time() + 30), None))
        go.put("go")
        assert await asyncio.to_thread(started.get, timeout=30) == 50
    finally:
        worker.kill()
        worker.join(timeout=10)
    assert (await gate.state(USER, limit=limit)).server_remaining == 50
    await asyncio.sleep(1.1)
    await gate.observe(USER, reply(200, _report(100, time.time() + 60), None))  # the next window
    assert (await gate.acquire(USER, 100, limit=limit)).granted == 90


async def test_a_live_grant_that_keeps_answering_is_not_expired_early(
    make_gate: MakeGate, prefix: str
) -> None:
    """Each answer renews the rest of its grant: a drain answering at least once per hold
    keeps its permits counted for as long as it runs, far past one hold."""
    a, b = make_gate(grant_hold_s=HOLD_S), make_gate(grant_hold_s=HOLD_S)
    limit = "100 per 60 seconds"
    reset = time.time() + 30
    await a.observe(USER, reply(200, _report(100, reset), None))
    grant = await a.acquire(USER, 20, limit=limit)
    assert grant.granted == 20
    for answered in range(1, 11):  # 2.5 s: over four holds
        await asyncio.sleep(HOLD_S / 2.4)
        await a.observe(
            USER,
            reply(200, _report(100 - answered, reset), None),
            sent_s=time.time(),
            grant=grant.id,
        )
        # 10 answered, 10 still in flight: never more than the server has left for us.
        assert (await b.state(USER, limit=limit)).server_remaining == 80
    assert await _in_flight(prefix) == {grant.id: 10}
    assert (await b.acquire(USER, 100, limit=limit)).granted == 70  # 80 less the careful 10


async def test_a_refusal_behind_permits_in_flight_waits_for_their_hold_not_the_reset(
    make_gate: MakeGate,
) -> None:
    gate = make_gate(grant_hold_s=HOLD_S)
    limit = "100 per 60 seconds"
    reset = time.time() + 30
    await gate.observe(USER, reply(200, _report(1, reset), None))
    lost = await gate.acquire(USER, 5, limit=limit)  # the careful single, never answered
    assert lost.granted == 1
    refused = await gate.acquire(USER, 5, limit=limit)
    assert refused.granted == 0 and refused.wait_s <= HOLD_S + 0.05  # not ~30 s
    await asyncio.sleep(refused.wait_s + 0.05)
    await gate.observe(USER, reply(200, _report(1, reset), None))  # a fresh report
    await asyncio.sleep(PROBE_TIMEOUT_S)  # the lost single's turn passes too
    await gate.observe(USER, reply(200, _report(1, reset), None))
    single = await gate.acquire(USER, 5, limit=limit)
    assert single.granted == 1
    # Answered: the server has nothing left, so the wait is the reset's again.
    await gate.observe(
        USER, reply(200, _report(0, reset), None), sent_s=time.time(), grant=single.id
    )
    spent = await gate.acquire(USER, 5, limit=limit)
    assert spent.granted == 0 and spent.wait_s == pytest.approx(reset - time.time(), abs=0.5)


async def test_in_flight_is_never_negative(make_gate: MakeGate, prefix: str) -> None:
    """Extra answers, answers and refunds of expired or unknown grants, refunds larger than
    the grant: what the server left for us is never above what it reported."""
    gate = make_gate(grant_hold_s=HOLD_S)
    limit = "100 per 60 seconds"
    reset = time.time() + 30

    async def server_remaining() -> int | None:
        return (await gate.state(USER, limit=limit)).server_remaining

    await gate.observe(USER, reply(200, _report(50, reset), None))
    five = await gate.acquire(USER, 5, limit=limit)
    assert five.granted == 5 and await server_remaining() == 45
    for _ in range(7):  # two answers more than the grant had
        await gate.observe(USER, reply(200, {}, None), sent_s=time.time(), grant=five.id)
    await gate.observe(USER, reply(200, {}, None), sent_s=time.time(), grant="no-such-grant")
    assert await server_remaining() == 50
    assert await _in_flight(prefix) == {}

    four = await gate.acquire(USER, 4, limit=limit)
    await gate.refund(USER, four.id, 3)  # partly used: 1 still in flight
    assert await server_remaining() == 49
    await gate.refund(USER, four.id, 10)  # more than it holds
    assert await server_remaining() == 50

    three = await gate.acquire(USER, 3, limit=limit)
    assert await server_remaining() == 47
    await asyncio.sleep(HOLD_S + 0.1)
    assert await server_remaining() == 50  # expired: no longer counted, even unpruned
    for _ in range(3):  # late answers of the expired grant take nothing more
        await gate.observe(USER, reply(200, {}, None), sent_s=time.time(), grant=three.id)
    await gate.refund(USER, three.id, 3)
    assert await server_remaining() == 50
    assert all(n > 0 for n in (await _in_flight(prefix)).values())
    with pytest.raises(ValueError):
        await gate.refund(USER, three.id, -1)


async def test_a_refund_gives_back_exactly_the_unused_permits(make_gate: MakeGate) -> None:
    a, b = make_gate(), make_gate()
    limit = "100 per 60 seconds"
    reset = time.time() + 30
    await a.observe(USER, reply(200, _report(40, reset), None))
    grant = await a.acquire(USER, 30, limit=limit)
    assert grant.granted == 30  # 40 less the careful 10
    await a.refund(USER, grant.id, 12)  # 18 sent, 12 never will be
    assert (await b.state(USER, limit=limit)).server_remaining == 22
    assert (await b.acquire(USER, 30, limit=limit)).granted == 12


async def test_nothing_is_left_in_redis_without_a_ttl(make_gate: MakeGate, prefix: str) -> None:
    """Every path: a cold-start probe answered without a figure (a server that does not
    report), our own window, reports, refusals, refunds, answers, a pause, a share."""
    blind, reporting = make_gate(probe_first=True, grant_hold_s=HOLD_S), make_gate()
    probe = await blind.acquire(USER, 5, limit="20 per 10 seconds")
    assert probe.granted == 1
    await blind.observe(USER, reply(200, {}, None), sent_s=time.time(), grant=probe.id)
    assert (await blind.acquire(USER, 5, limit="20 per 10 seconds")).granted == 5  # own window
    other = "user-2"
    await reporting.observe(other, reply(200, _report(30, time.time() + 30), None))
    grant = await reporting.acquire(other, 100, limit="100 per 60 seconds")
    await reporting.refund(other, grant.id, 5)
    await reporting.observe(other, reply(200, {}, None), sent_s=time.time(), grant=grant.id)
    # 30 reported, 14 in flight, 10 careful: 6 at once, then one at a time.
    wants = [await reporting.acquire(other, 100, limit="100 per 60 seconds") for _ in range(3)]
    assert [g.granted for g in wants] == [6, 1, 0]
    await reporting.take_share(other, "dest", 3, limit="100 per 60 seconds", share=0.5)
    await reporting.pause(other, time.time() + 5)

    def ttls() -> dict[str, int]:
        with redis.Redis.from_url(REDIS_URL) as client:
            return {k.decode(): client.pttl(k) for k in client.scan_iter(match=f"{prefix}:*")}

    found = ttls()
    ns, other_ns = Keys(prefix).quota(USER), Keys(prefix).quota(other)
    for key in (f"{ns}:server", f"{ns}:grants", f"{other_ns}:grants", f"{other_ns}:server"):
        assert key in found
    assert all(ttl > 0 for ttl in found.values()), found
    # The grants' keys live no longer than their last grant.
    assert found[f"{ns}:grants"] <= HOLD_S * 1000
    await asyncio.sleep(HOLD_S + 0.1)
    assert f"{ns}:grants" not in ttls() and f"{ns}:grants:out" not in ttls()


# Issue 15: the careful reserve and the headroom follow the limit Outreach reports.


@pytest.mark.parametrize(
    ("configured", "reported", "remaining", "burst"),
    [
        # Configured far above the server's 100: before, the reserve was 10% of 1,000,000
        # (more than the server's whole budget), so every request went one at a time.
        ("1000000 per 60 seconds", 100, 100, 90),
        # Configured below the server's 1000 (ours caps the spending), someone else has
        # spent it down to 150: the reserve is the server's 100, not 10% of our 500.
        ("500 per 60 seconds", 1000, 150, 50),
    ],
)
async def test_a_burst_spends_the_reported_budget_down_to_its_own_careful_reserve(
    make_gate: MakeGate, configured: str, reported: int, remaining: int, burst: int
) -> None:
    gate = make_gate()
    await gate.observe(USER, reply(200, _report(remaining, time.time() + 30, reported), None))
    assert (await gate.acquire(USER, 1000, limit=configured)).granted == burst
    # Then one at a time, each after the answer to the one before.
    assert (await gate.acquire(USER, 1000, limit=configured)).granted == 1
    assert (await gate.acquire(USER, 1000, limit=configured)).granted == 0


async def test_the_headroom_is_a_share_of_the_reported_limit(make_gate: MakeGate) -> None:
    """``reserve_share`` leaves 20% of Outreach's 100 to the user, not 20% of the configured
    1,000,000 (which would leave the service nothing at all)."""
    gate = make_gate()
    await gate.observe(USER, reply(200, _report(100, time.time() + 30), None))
    grant = await gate.acquire(USER, 200, limit="1000000 per 60 seconds", reserve_share=0.2)
    assert grant.granted == 70  # 100 less the headroom (20) less the careful reserve (10)


@pytest.mark.parametrize(
    ("configured", "reported", "governing", "careful"),
    [
        ("1000000 per 60 seconds", 100, 100, 10),
        ("50 per 60 seconds", 100, 50, 10),
        ("50 per 60 seconds", None, 50, 5),
    ],
)
async def test_the_state_says_which_limit_governs(
    make_gate: MakeGate, configured: str, reported: int | None, governing: int, careful: int
) -> None:
    gate = make_gate()
    if reported is not None:
        await gate.observe(USER, reply(200, _report(80, time.time() + 30, reported), None))
    limits = (await gate.state(USER, limit=configured)).limits
    assert limits == QuotaLimits(
        configured=int(configured.split()[0]),
        reported=reported,
        governing=governing,
        source="reported" if governing == reported else "configured",
        careful=careful,
    )
