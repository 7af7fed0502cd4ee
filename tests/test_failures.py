"""Dead letters (list, show, replay, purge) and resync, against real Redis and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.core.errors import Permanent, Retryable
from app.core.keys import Keys
from app.delivery.drain import failure_record
from app.store.failures import list_failures, purge, replay, show_failure
from app.store.prospects import ProspectStore, encode
from app.store.registry import publish_sync
from app.store.resync import resync
from tests.support import ROOT, TEST_REDIS_URL, e2e_config, settings_env

A, B = "fa", "fb"
T0 = 1_800_000_000_000
W = 1000


@pytest.fixture
def keys(prefix: str, rclient: redis.Redis) -> Keys:
    k = Keys(prefix)
    publish_sync(rclient, k, e2e_config(A))
    publish_sync(rclient, k, e2e_config(B))
    return k


@pytest.fixture
async def store(keys: Keys) -> AsyncIterator[ProspectStore]:
    client = aioredis.from_url(TEST_REDIS_URL)
    yield ProspectStore(client, keys)
    await client.aclose()


def ch(field: str, value: object, ts: int) -> tuple[str, str, int]:
    return (field, encode(value), ts)


async def claim_all(store: ProspectStore, dest: str, now: int) -> dict[int, dict[str, Any]]:
    got = await store.claim(dest, now_ms=now, lease_ms=30_000, batch=100, token=f"t{now}")
    return {c.prospect: c.fields for c in got}


async def deliver(store: ProspectStore, dest: str, prospect: int, now: int) -> dict[str, Any]:
    """Claim what is due at ``now`` and settle it "ok"; returns the prospect's fields sent."""
    sent = await claim_all(store, dest, now)
    for p, fields in sent.items():
        await store.settle(dest, p, f"t{now}", "ok", now_ms=now, window_ms=W, fields=list(fields))
    return sent.get(prospect, {})


async def fail(
    store: ProspectStore,
    dest: str,
    prospect: int,
    changes: dict[str, tuple[object, int]],
    *,
    at_ms: int,
    reason: str = "http_422",
    status: int | None = 422,
    detail: str = "Validation failed",
) -> str:
    """Send ``changes`` through merge and claim, then fail them as ``Deliverer._fail`` does
    (the record of ``Deliverer._record``, then settle "drop")."""
    merged = [ch(f, v, ts) for f, (v, ts) in changes.items()]
    await store.merge(dest, {prospect: merged}, now_ms=at_ms - W, window_ms=W)
    [c] = await store.claim(dest, now_ms=at_ms, lease_ms=30_000, batch=10, token="f")
    err = (
        Permanent(status, detail, error_id="validationError") if status else Retryable(None, detail)
    )
    record = await failure_record(store, dest, c, err, reason)
    record["id"], record["at_ms"] = f"{prospect}:{at_ms}:{min(c.fields)}", at_ms  # the test's clock
    await store.record_failure(dest, str(record["id"]), record)
    await store.settle(dest, prospect, "f", "drop", now_ms=at_ms, window_ms=W)
    return str(record["id"])


def pending(rclient: redis.Redis, keys: Keys, dest: str, prospect: int) -> dict[str, Any]:
    raw = rclient.hgetall(keys.pending(dest, prospect))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


async def three_failures(store: ProspectStore) -> list[str]:
    return [
        await fail(store, A, 1, {"custom1": ("realized", 10)}, at_ms=T0),
        await fail(
            store,
            A,
            2,
            {"custom2": ("exited", 10), "firstName": ("Ada", 10)},
            at_ms=T0 + 1000,
            reason="http_404",
            status=404,
        ),
        await fail(
            store,
            B,
            3,
            {"custom1": ("existing", 10)},
            at_ms=T0 + 2000,
            reason="retries_exhausted",
            status=None,
        ),
    ]


async def test_list_is_newest_first_and_filters(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    f1, f2, f3 = await three_failures(store)

    def ids(**kw: Any) -> list[str]:
        return [r["id"] for r in list_failures(rclient, keys, **kw)]

    assert ids() == [f3, f2, f1]
    assert ids(destination=A) == [f2, f1]
    assert ids(reason="http_404") == [f2]
    assert ids(mapping_id=1) == [f3, f1]
    assert ids(destination=A, mapping_id=2) == [f2]
    assert ids(limit=1) == [f3]
    assert ids(reason="http_500") == []


async def test_show_returns_the_record_or_none(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    _, f2, _ = await three_failures(store)
    rec = show_failure(rclient, keys, A, f2)
    assert rec is not None
    assert rec["fields"] == {"custom2": "exited", "firstName": "Ada"}
    assert rec["versions"] == {"custom2": 10, "firstName": 10}
    assert (rec["reason"], rec["status"], rec["mapping_ids"]) == ("http_404", 404, [2])
    assert show_failure(rclient, keys, A, "2:1") is None
    assert show_failure(rclient, keys, B, f2) is None


async def test_replay_makes_the_prospect_due_with_its_failed_fields(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    f1, f2, f3 = await three_failures(store)
    assert rclient.zscore(keys.due(A), 2) is None and pending(rclient, keys, A, 2) == {}
    t1 = T0 + 60_000
    res = replay(rclient, keys, destination=A, failure_ids=[f2], window_ms=W, now_ms=t1)
    assert (res.replayed, res.fields_applied, res.fields_stale, res.missing) == (1, 2, 0, ())
    assert rclient.zscore(keys.due(A), 2) == t1 + W
    assert pending(rclient, keys, A, 2) == {"custom2": "exited", "firstName": "Ada"}
    assert show_failure(rclient, keys, A, f2) is None
    assert [r["id"] for r in list_failures(rclient, keys)] == [f3, f1]
    assert rclient.lrange(keys.wake(), -1, -1) == [A.encode()]
    assert await deliver(store, A, 2, t1 + W) == {"custom2": "exited", "firstName": "Ada"}


async def test_replay_keeps_a_newer_change_that_arrived_meanwhile(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    fid = await fail(store, A, 7, {"custom1": ("realized", 100), "title": ("CTO", 100)}, at_ms=T0)
    # The audience was re-evaluated after the failure, and that newer value was delivered.
    await store.merge(A, {7: [ch("custom1", "exited", 200)]}, now_ms=T0 + W, window_ms=W)
    assert await deliver(store, A, 7, T0 + 2 * W) == {"custom1": "exited"}
    res = replay(rclient, keys, destination=A, failure_ids=[fid], window_ms=W, now_ms=T0 + 3 * W)
    assert (res.replayed, res.fields_applied, res.fields_stale) == (1, 1, 1)
    assert pending(rclient, keys, A, 7) == {"title": "CTO"}
    assert await claim_all(store, A, T0 + 4 * W) == {7: {"title": "CTO"}}
    assert show_failure(rclient, keys, A, fid) is None


async def test_replay_of_a_value_outreach_already_holds_costs_nothing(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    fid = await fail(store, A, 8, {"custom1": ("realized", 100)}, at_ms=T0)
    # Outreach confirmed that very value some other way (e.g. an earlier identical request).
    rclient.hset(keys.delivered(A, 8), "custom1", encode("realized"))
    res = replay(rclient, keys, destination=A, failure_ids=[fid], window_ms=W, now_ms=T0)
    assert res.fields_applied == 1
    assert await claim_all(store, A, T0 + W) == {}
    assert (await store.counters(A))["prospects_noop"] == 1


async def test_replay_by_filter_and_missing_ids(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    f1, f2, _ = await three_failures(store)
    res = replay(rclient, keys, destination=A, reason="http_422", window_ms=W, now_ms=T0)
    assert (res.replayed, res.fields_applied) == (1, 1)
    assert [r["id"] for r in list_failures(rclient, keys, destination=A)] == [f2]
    res = replay(rclient, keys, destination=A, failure_ids=[f1, "9:9"], window_ms=W, now_ms=T0)
    assert (res.replayed, res.missing) == (0, (f1, "9:9"))


async def test_purge_by_reason_and_by_id(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    f1, f2, f3 = await three_failures(store)
    assert purge(rclient, keys, destination=A, reason="http_404") == 1
    assert [r["id"] for r in list_failures(rclient, keys)] == [f3, f1]
    assert purge(rclient, keys, destination=A, failure_ids=[f1, f2]) == 1
    assert [r["id"] for r in list_failures(rclient, keys)] == [f3]
    assert pending(rclient, keys, A, 2) == {}  # purging sends nothing
    assert rclient.zrange(keys.failures_recent(A), 0, -1) == []  # the status page's index too


async def test_replay_removes_the_record_from_the_recent_failures_index(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    f1, f2, _ = await three_failures(store)
    assert set(rclient.zrange(keys.failures_recent(A), 0, -1)) == {f1.encode(), f2.encode()}
    replay(rclient, keys, destination=A, failure_ids=[f1], window_ms=W, now_ms=T0)
    assert rclient.zrange(keys.failures_recent(A), 0, -1) == [f2.encode()]


def cli(prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **settings_env(prefix, None)},
        timeout=60,
    )


async def test_cli_lists_shows_replays_and_purges(
    store: ProspectStore, rclient: redis.Redis, keys: Keys, prefix: str
) -> None:
    f1, f2, f3 = await three_failures(store)
    out = cli(prefix, "failures", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == [f3, f2, f1]
    out = cli(prefix, "failures", "list", "-d", A, "--reason", "http_404")
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "DESTINATION", "PROSPECT", "REASON"]
    assert len(lines) == 2 and lines[1].split()[:6] == [f2, A, "2", "http_404", "404", "2"]
    out = cli(prefix, "failures", "show", A, f1)
    assert json.loads(out.stdout)["fields"] == {"custom1": "realized"}

    out = cli(prefix, "failures", "replay", "-d", A, f2)
    assert out.returncode == 0, out.stderr
    assert "replayed 1 failure(s): 2 field(s) pending again" in out.stdout
    assert pending(rclient, keys, A, 2) == {"custom2": "exited", "firstName": "Ada"}
    assert rclient.zscore(keys.due(A), 2) is not None
    assert show_failure(rclient, keys, A, f2) is None

    refused = cli(prefix, "failures", "purge", "-d", A, "--reason", "http_422")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert show_failure(rclient, keys, A, f1) is not None
    out = cli(prefix, "failures", "purge", "-d", A, "--reason", "http_422", "--yes")
    assert out.returncode == 0 and "purged 1 failure(s)" in out.stdout
    assert show_failure(rclient, keys, A, f1) is None


def test_cli_names_an_unknown_destination_or_failure(keys: Keys, prefix: str) -> None:
    for args in (
        ("failures", "list", "-d", "nope"),
        ("failures", "replay", "-d", "nope"),
        ("resync", "nope"),
    ):
        out = cli(prefix, *args)
        assert out.returncode == 2 and "unknown destination 'nope'" in out.stderr, args
    out = cli(prefix, "failures", "show", A, "1:2")
    assert out.returncode == 1 and "no failure '1:2' in destination 'fa'" in out.stderr


async def test_resync_sends_the_delivered_state_again(
    store: ProspectStore, rclient: redis.Redis, keys: Keys, prefix: str
) -> None:
    state = {"custom1": "realized", "firstName": "Ada"}
    await store.merge(A, {5: [ch(f, v, 1) for f, v in state.items()]}, now_ms=T0, window_ms=W)
    assert await deliver(store, A, 5, T0 + W) == state
    # The same values again: a no-op, since Outreach holds them (as far as we know).
    await store.merge(A, {5: [ch(f, v, 2) for f, v in state.items()]}, now_ms=T0, window_ms=W)
    assert await deliver(store, A, 5, T0 + 2 * W) == {}

    t = T0 + 10 * W
    assert resync(rclient, keys, A, window_ms=W, now_ms=t) == 1
    assert rclient.zscore(keys.due(A), 5) == t + W
    assert rclient.lrange(keys.wake(), -1, -1) == [A.encode()]
    assert await claim_all(store, A, t + W - 1) == {}
    assert await deliver(store, A, 5, t + W) == state
    await store.merge(A, {5: [ch(f, v, 3) for f, v in state.items()]}, now_ms=t, window_ms=W)
    assert await deliver(store, A, 5, t + 3 * W) == {}
    # Nothing of another destination is touched.
    assert resync(rclient, keys, B, window_ms=W, now_ms=t) == 0


async def test_resync_keeps_pending_and_in_flight_values(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    first = {6: [ch("custom1", "realized", 1), ch("title", "CTO", 1)]}
    first[9] = [ch("custom1", "realized", 1), ch("title", "CTO", 1)]
    await store.merge(A, first, now_ms=T0, window_ms=W)
    assert await deliver(store, A, 6, T0 + W) == {"custom1": "realized", "title": "CTO"}
    # 9: a newer title is in flight; 6: a newer title waits.
    await store.merge(A, {9: [ch("title", "CEO", 2)]}, now_ms=T0 + W, window_ms=W)
    [c] = await store.claim(A, now_ms=T0 + 2 * W, lease_ms=30_000, batch=10, token="fly")
    assert (c.prospect, c.fields) == (9, {"title": "CEO"})
    await store.merge(A, {6: [ch("title", "VP", 2)]}, now_ms=T0 + 2 * W, window_ms=W)

    t = T0 + 3 * W
    assert resync(rclient, keys, A, window_ms=W, now_ms=t) == 2
    assert pending(rclient, keys, A, 6) == {"custom1": "realized", "title": "VP"}
    assert pending(rclient, keys, A, 9) == {"custom1": "realized"}
    assert rclient.zscore(keys.due(A), 9) is None  # in flight: its ack schedules it
    await store.settle(A, 9, "fly", "ok", now_ms=t, window_ms=W, fields=["title"])
    assert await claim_all(store, A, t + W) == {
        6: {"custom1": "realized", "title": "VP"},
        9: {"custom1": "realized"},
    }


async def test_replay_of_two_failures_of_one_field_sends_the_newer(
    store: ProspectStore, rclient: redis.Redis, keys: Keys
) -> None:
    await fail(store, A, 4, {"custom1": ("realized", 10)}, at_ms=T0)
    await fail(store, A, 4, {"custom1": ("exited", 20)}, at_ms=T0 + 5 * W)
    res = replay(rclient, keys, destination=A, window_ms=W, now_ms=T0 + 9 * W)
    assert (res.replayed, res.fields_applied, res.fields_stale) == (2, 1, 1)
    assert pending(rclient, keys, A, 4) == {"custom1": "exited"}
    assert list_failures(rclient, keys) == []


async def test_replay_of_a_value_superseded_during_its_flight_never_overwrites_the_newer(
    store: ProspectStore, rclient: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await store.merge(A, {7: [ch("custom1", "realized", 100)]}, now_ms=T0, window_ms=W)
    [c] = await store.claim(A, now_ms=T0 + W, lease_ms=30_000, batch=10, token="f")
    # A newer change arrives while "realized" is in flight; then "realized" is refused.
    await store.merge(A, {7: [ch("custom1", "exited", 200)]}, now_ms=T0 + W, window_ms=W)
    record = await failure_record(store, A, c, Permanent(422, "refused"), "http_422")
    assert record["versions"] == {}  # superseded: no version to replay with
    await store.record_failure(A, str(record["id"]), record)
    await store.settle(A, 7, "f", "drop", now_ms=T0 + W, window_ms=W)
    result = replay(rclient, keys, destination=A, window_ms=W, now_ms=T0 + 2 * W)
    assert (result.replayed, result.fields_applied, result.fields_stale) == (1, 0, 1)
    assert pending(rclient, keys, A, 7) == {"custom1": "exited"}
