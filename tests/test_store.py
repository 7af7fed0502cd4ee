"""The coalescing store's rules, run against real Redis through the Lua scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import pytest
import redis
import redis.asyncio as aioredis

from app.core.errors import UnknownDestination
from app.core.keys import Keys
from app.store.prospects import Claimed, ProspectStore, encode, merge_sync, poll_sync
from app.store.registry import DestinationBusy, publish_sync, swap_destination
from tests.support import TEST_REDIS_URL, e2e_config

D = "dest-a"
T0 = 1_800_000_000_000
W = 1000


@pytest.fixture(autouse=True)
def destination(prefix: str, rclient: redis.Redis) -> None:
    publish_sync(rclient, Keys(prefix), e2e_config(D))  # merge.lua refuses unknown ones


@pytest.fixture
async def store(prefix: str) -> AsyncIterator[ProspectStore]:
    client = aioredis.from_url(TEST_REDIS_URL)
    yield ProspectStore(client, Keys(prefix))
    await client.aclose()


def ch(field: str, value: object, ts: int) -> tuple[str, str, int]:
    return (field, encode(value), ts)


async def claim_all(
    store: ProspectStore, now: int, token: str = "tok"
) -> dict[int, dict[str, object]]:
    got = await store.claim(D, now_ms=now, lease_ms=30_000, batch=100, token=token)
    return {c.prospect: c.fields for c in got}


async def test_newer_version_wins_and_late_older_evaluation_is_ignored(
    store: ProspectStore,
) -> None:
    await store.merge(D, {7: [ch("custom1", "realized", 200)]}, now_ms=T0, window_ms=W)
    res = await store.merge(D, {7: [ch("custom1", "exited", 100)]}, now_ms=T0, window_ms=W)
    assert (res.applied, res.stale) == (0, 1)
    await store.merge(D, {7: [ch("custom1", "existing", 200)]}, now_ms=T0, window_ms=W)
    assert await claim_all(store, T0 + W) == {7: {"custom1": "existing"}}


async def test_many_changes_to_one_prospect_become_one_claim_after_the_window(
    store: ProspectStore,
) -> None:
    first = await store.merge(D, {1: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    later = await store.merge(
        D,
        {1: [ch("custom2", "exited", 2), ch("firstName", "Ada", 2)]},
        now_ms=T0 + 500,
        window_ms=W,
    )
    assert (first.newly_due, later.newly_due) == (1, 0)
    assert await claim_all(store, T0 + W - 1) == {}
    assert await claim_all(store, T0 + W) == {
        1: {"custom1": "realized", "custom2": "exited", "firstName": "Ada"}
    }


async def test_change_arriving_in_flight_is_kept_and_sent_next(store: ProspectStore) -> None:
    await store.merge(D, {5: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    assert await claim_all(store, T0 + W, "t1") == {5: {"custom1": "realized"}}
    await store.merge(D, {5: [ch("custom1", "exited", 2)]}, now_ms=T0 + W + 10, window_ms=W)
    # Not claimable while in flight: two PATCHes to one prospect must never race.
    assert await claim_all(store, T0 + 10 * W, "t2") == {}
    ok = await store.settle(D, 5, "t1", "ok", now_ms=T0 + W + 50, window_ms=W, fields=["custom1"])
    assert ok
    assert await claim_all(store, T0 + 10 * W, "t3") == {5: {"custom1": "exited"}}


async def test_value_equal_to_delivered_costs_no_claim(store: ProspectStore) -> None:
    await store.merge(D, {9: [ch("custom3", "realized", 1)]}, now_ms=T0, window_ms=W)
    await claim_all(store, T0 + W, "t1")
    await store.settle(D, 9, "t1", "ok", now_ms=T0 + W, window_ms=W, fields=["custom3"])
    await store.merge(D, {9: [ch("custom3", "exited", 2)]}, now_ms=T0 + 2 * W, window_ms=W)
    await store.merge(D, {9: [ch("custom3", "realized", 3)]}, now_ms=T0 + 2 * W, window_ms=W)
    assert await claim_all(store, T0 + 4 * W, "t2") == {}
    counters = await store.counters(D)
    assert counters["prospects_noop"] == 1 and counters["fields_noop"] == 1


async def test_retry_returns_snapshot_but_newer_pending_values_win(store: ProspectStore) -> None:
    await store.merge(
        D, {3: [ch("custom1", "realized", 1), ch("title", "CTO", 1)]}, now_ms=T0, window_ms=W
    )
    await claim_all(store, T0 + W, "t1")
    await store.merge(D, {3: [ch("title", "VP", 2)]}, now_ms=T0 + W, window_ms=W)
    settled = await store.settle(D, 3, "t1", "retry", now_ms=T0 + W, window_ms=W, due_ms=T0 + 5 * W)
    assert settled
    assert await claim_all(store, T0 + 5 * W - 1, "t2") == {}
    got = await store.claim(D, now_ms=T0 + 5 * W, lease_ms=30_000, batch=10, token="t3")
    assert [(c.prospect, c.fields, c.attempts) for c in got] == [
        (3, {"custom1": "realized", "title": "VP"}, 1)
    ]


async def test_a_dead_letter_takes_its_attempts_and_a_new_change_starts_fresh(
    store: ProspectStore, rclient: redis.Redis, prefix: str
) -> None:
    await store.merge(D, {4: [ch("title", "CTO", 1)]}, now_ms=T0, window_ms=W)
    await claim_all(store, T0 + W, "t1")
    await store.settle(D, 4, "t1", "retry", now_ms=T0 + W, window_ms=W, due_ms=T0 + 2 * W)
    [again] = await store.claim(D, now_ms=T0 + 2 * W, lease_ms=30_000, batch=10, token="t2")
    assert again.attempts == 1
    await store.settle(D, 4, "t2", "drop", now_ms=T0 + 2 * W, window_ms=W)
    assert rclient.hlen(Keys(prefix).attempts(D)) == 0
    await store.merge(D, {4: [ch("title", "VP", 2)]}, now_ms=T0 + 3 * W, window_ms=W)
    [fresh] = await store.claim(D, now_ms=T0 + 4 * W, lease_ms=30_000, batch=10, token="t3")
    assert (fresh.fields, fresh.attempts) == ({"title": "VP"}, 0)


async def test_expired_lease_comes_back_and_late_settle_changes_nothing(
    store: ProspectStore,
) -> None:
    await store.merge(D, {4: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    await store.claim(D, now_ms=T0 + W, lease_ms=5000, batch=10, token="crashed")
    assert await claim_all(store, T0 + W + 4999, "t2") == {}
    assert await claim_all(store, T0 + W + 5000, "t2") == {4: {"custom1": "realized"}}
    late = await store.settle(D, 4, "crashed", "ok", now_ms=T0, window_ms=W, fields=["custom1"])
    assert late is False
    counters = await store.counters(D)
    assert counters["lease_expired"] == 1 and counters["late_settles"] == 1


async def test_sync_merge_matches_async_and_wakes_dispatchers(
    prefix: str, rclient: redis.Redis, store: ProspectStore
) -> None:
    keys = Keys(prefix)
    before = rclient.lrange(keys.wake(), 0, -1)  # publishing the destination woke them too
    res = merge_sync(rclient, keys, D, {1: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    assert res.newly_due == 1
    assert rclient.lrange(keys.wake(), 0, -1) == [*before, D.encode()]
    assert await claim_all(store, T0 + W) == {1: {"custom1": "realized"}}


def test_poll_allots_slots_for_the_backlog_up_to_the_maximum(
    prefix: str, rclient: redis.Redis
) -> None:
    keys = Keys(prefix)
    changes = {p: [ch("custom1", "realized", 1)] for p in range(1, 251)}
    merge_sync(rclient, keys, D, changes, now_ms=T0, window_ms=W)
    before = poll_sync(rclient, keys, D, now_ms=T0, batch=50, max_drainers=3, slot_ttl_ms=10_000)
    assert (before.ready, before.next_ms, before.new_slots) == (0, T0 + W, ())
    first = poll_sync(rclient, keys, D, now_ms=T0 + W, batch=50, max_drainers=3, slot_ttl_ms=10_000)
    assert first.ready == 250 and len(first.new_slots) == 3
    again = poll_sync(rclient, keys, D, now_ms=T0 + W, batch=50, max_drainers=3, slot_ttl_ms=10_000)
    assert again.new_slots == ()
    expired = poll_sync(
        rclient, keys, D, now_ms=T0 + W + 10_000, batch=50, max_drainers=3, slot_ttl_ms=10_000
    )
    assert len(expired.new_slots) == 3


async def test_hold_stops_slots_until_it_ends(
    prefix: str, rclient: redis.Redis, store: ProspectStore
) -> None:
    keys = Keys(prefix)
    merge_sync(rclient, keys, D, {1: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=0)
    await store.hold(D, T0 + 5000, now_ms=T0)
    held = poll_sync(rclient, keys, D, now_ms=T0 + 10, batch=50, max_drainers=3, slot_ttl_ms=10_000)
    assert (held.ready, held.next_ms, held.new_slots) == (0, T0 + 5000, ())
    after = poll_sync(rclient, keys, D, now_ms=T0 + 5000, batch=50, max_drainers=3, slot_ttl_ms=1)
    assert after.ready == 1 and len(after.new_slots) == 1


async def test_merge_refuses_a_destination_that_does_not_exist(
    prefix: str, rclient: redis.Redis, store: ProspectStore
) -> None:
    keys = Keys(prefix)
    gone = "deleted-dest"
    with pytest.raises(UnknownDestination, match=gone):
        await store.merge(gone, {1: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    with pytest.raises(UnknownDestination, match=gone):
        merge_sync(rclient, keys, gone, {1: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    assert list(rclient.scan_iter(match=f"{prefix}:{{{gone}}}:*")) == []


async def test_deleting_only_if_idle_is_refused_once_a_change_arrived(
    prefix: str, rclient: redis.Redis, store: ProspectStore
) -> None:
    # What an admin's DELETE (without force) does after counting an empty backlog: the
    # deletion script counts again, so a change merged in between is never orphaned.
    keys = Keys(prefix)
    raw = rclient.hget(keys.destinations(), D)
    await store.merge(D, {1: [ch("custom1", "realized", 1)]}, now_ms=T0, window_ms=W)
    with pytest.raises(DestinationBusy):
        await swap_destination(store.redis, keys, D, expected=raw, new=None, only_if_idle=True)
    assert rclient.hexists(keys.destinations(), D)
    assert await swap_destination(store.redis, keys, D, expected=raw, new=None) is True
    assert not rclient.hexists(keys.destinations(), D)


async def test_values_ids_and_times_cross_the_merge_exactly(
    store: ProspectStore, rclient: redis.Redis, prefix: str
) -> None:
    # The changes reach the merge script as one JSON document: non-ASCII text (an emoji is a
    # UTF-16 surrogate pair in JSON), quotes and backslashes, a 64-bit prospect id and the
    # latest time a profile may carry (9999-12-31, exact in a double) must come out exactly.
    keys = Keys(prefix)
    big_id, late = 2**63 - 1, 253_402_300_799_999
    value = 'Zoë "Z" \\ 東京 😀'
    await store.merge(D, {big_id: [ch("firstName", value, late)]}, now_ms=T0, window_ms=W)
    assert rclient.hget(keys.pending(D, big_id), "firstName") == encode(value).encode()
    assert rclient.hget(keys.versions(D, big_id), "firstName") == str(late).encode()
    assert await claim_all(store, T0 + W) == {big_id: {"firstName": value}}
    older = await store.merge(D, {big_id: [ch("firstName", "x", late - 1)]}, now_ms=T0, window_ms=W)
    assert (older.applied, older.stale) == (0, 1)


async def test_a_claim_whose_candidates_another_claim_took_looks_again(
    store: ProspectStore, prefix: str
) -> None:
    # A claim reads its candidates before its script runs (to declare their keys); here
    # another claim takes them all in between: it looks again instead of reporting nothing.
    changes = {p: [ch("custom1", "realized", 1)] for p in range(1, 101)}
    await store.merge(D, changes, now_ms=T0, window_ms=0)
    other = store.claim(D, now_ms=T0 + W, lease_ms=30_000, batch=50, token="a")
    late = LateReader(store.redis, Keys(prefix), before_first_claim=other)
    second = await late.claim(D, now_ms=T0 + W, lease_ms=30_000, batch=50, token="b")
    assert len(late.first) == len(second) == 50
    assert {c.prospect for c in late.first} | {c.prospect for c in second} == set(changes)


class LateReader(ProspectStore):
    """Runs ``before_first_claim`` right after reading its first candidates."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, *, before_first_claim: Awaitable[list[Claimed]]
    ) -> None:
        super().__init__(client, keys)
        self._before: Awaitable[list[Claimed]] | None = before_first_claim
        self.first: list[Claimed] = []

    async def _candidates(self, dest: str, *, now_ms: int, batch: int) -> tuple[list[int], ...]:
        found = await super()._candidates(dest, now_ms=now_ms, batch=batch)
        if self._before is not None:
            self.first, self._before = await self._before, None
        return found
