"""Bulk delivery, in process: the real drain on real Redis against the sandbox over HTTP.

Each test runs the drain until nothing is pending, in flight or tracked, then checks the
sandbox's prospects (the final state must be exact), its batches and its request log."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from app.config.destinations import parse_config
from app.connections.oauth import AccessToken, RefreshOutcome
from app.core.keys import Keys
from app.delivery.drain import Deliverer
from app.delivery.grouping import group, mostly_one_group
from app.ops.alerts import LastHour, conditions, snapshot_from_status
from app.ops.status import destination_status
from app.outreach.client import OutreachClient
from app.ratelimit.gate import gate_for
from app.store.bulk_state import BulkState, cost_per_record
from app.store.failures import list_failures
from app.store.prospects import Claimed, ProspectStore, encode
from app.store.registry import Registry, publish_sync
from tests.support import TEST_REDIS_URL, Sandbox, make_settings, settings_env

D = "d"
WARM = 999
FAST = {"poll_first_s": 0.05, "poll_max_s": 0.2, "timeout_s": 3.0}


class Tokens:
    token = "test-token"

    async def current(self, conn_id: str) -> AccessToken | None:
        return AccessToken(conn_id, self.token, 1)

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        return RefreshOutcome.REFRESHED


@dataclass
class Rig:
    deliverer: Deliverer
    store: ProspectStore
    sandbox: Sandbox
    rclient: redis.Redis
    keys: Keys
    tokens: Tokens

    async def pending(self, changes: Mapping[int, Mapping[str, Any]]) -> None:
        now = int(time.time() * 1000)
        await self.store.merge(
            D,
            {p: [(f, encode(v), now) for f, v in fs.items()] for p, fs in changes.items()},
            now_ms=now - 10,
            window_ms=0,
        )

    async def settle_all(self, timeout_s: float = 30.0) -> Counter[str]:
        """Drain until nothing is pending, in flight or tracked."""
        stats: Counter[str] = Counter()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.deliverer.drain(D, stats=stats)
            await self.deliverer.wait_idle()
            due, flying = await self.store.backlog(D)
            if not due and not flying:
                return stats
            await asyncio.sleep(0.05)
        raise AssertionError(f"not settled: {await self.store.backlog(D)}")

    def prospects(self) -> dict[int, dict[str, Any]]:
        return {p: v for p, v in self.sandbox.prospects().items() if p != WARM}

    async def counters(self) -> dict[str, int]:
        return await self.store.counters(D)

    def bulk_requests(self) -> list[dict[str, Any]]:
        log = self.sandbox.get("/_sandbox/requests?since=0")["requests"]
        return [x for x in log if "batches" in x["path"]]

    def batches(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.sandbox.get("/_sandbox/batches")
        return result

    def patched(self) -> Counter[int]:
        log = self.sandbox.patches()
        return Counter(r["prospect_id"] for r in log if r["status"] and r["prospect_id"] != WARM)

    def config(self, **changes: Any) -> None:
        self.sandbox.post("/_sandbox/config", changes)


Factory = Callable[..., Any]


@pytest.fixture
async def rig(
    prefix: str, rclient: redis.Redis, sandbox_factory: Callable[..., Sandbox]
) -> AsyncIterator[Factory]:
    made: list[tuple[aioredis.Redis, aiohttp.ClientSession]] = []

    async def make(*sandbox_args: str, **bulk: Any) -> Rig:
        sandbox = sandbox_factory(*sandbox_args)
        env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="0", RETRY_BACKOFF_BASE_S="0.05")
        settings = make_settings(env)
        config = {
            "connections": [{"id": "c", "user": "test-user", "access_token": "test-token"}],
            "destinations": [
                {
                    "id": D,
                    "name": D,
                    "connection": "c",
                    "audiences": {f"a{n}": n for n in range(1, 60)},
                    "bulk": {"enabled": True, "min_group": 3, "ids_per_call": 5, **FAST, **bulk},
                }
            ],
        }
        publish_sync(rclient, Keys(prefix), parse_config(config))
        aclient = aioredis.from_url(TEST_REDIS_URL)
        session = aiohttp.ClientSession()
        made.append((aclient, session))
        store = ProspectStore(aclient, settings.keys)
        client = OutreachClient(session, api_url=settings.outreach_api_url, timeout_s=5)
        tokens = Tokens()
        deliverer = Deliverer(
            store=store,
            registry=Registry(aclient, settings.keys),
            client=client,
            gate=gate_for(aclient, settings),
            settings=settings,
            refresher=tokens,
        )
        rig = Rig(deliverer, store, sandbox, rclient, settings.keys, tokens)
        # Warm the gate (its first request learns Outreach's figure; bulk waits for it).
        await rig.pending({WARM: {"custom1": "warm"}})
        await rig.settle_all()
        return rig

    yield make
    for aclient, session in made:
        await session.close()
        await aclient.aclose()


@contextmanager
def outage(r: Rig, *, fault: str, until: str, start: str | None = None) -> Iterator[None]:
    """Outreach failing every request (``fault``: a 5xx answer, or the connection dropped)
    from when a request whose path holds ``start`` is logged (at once without one) until a
    request whose path holds ``until`` has failed; healthy again after that."""
    key = {"5xx": "fault_5xx_rate", "drop": "fault_drop_rate"}[fault]
    stop = threading.Event()

    def seen(part: str, *, failed: bool) -> bool:
        log = r.sandbox.get("/_sandbox/requests?since=0")["requests"]
        return any(part in x["path"] and (not failed or x["status"] in FAILED) for x in log)

    def watch() -> None:
        while start is not None and not seen(start, failed=False):
            if stop.wait(0.005):
                return
        r.config(**{key: 1.0})
        while not stop.wait(0.005):
            if seen(until, failed=True):
                r.config(**{key: 0.0})
                return

    if start is None:
        r.config(**{key: 1.0})
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        r.config(**{key: 0.0})


FAILED = {0, 500, 502, 503}


async def failures_in_row(r: Rig) -> int:
    figures = await BulkState(r.store.redis, r.keys).figures(D)
    return int(figures.get("failures_in_row", 0))


def claimed(prospect: int, **fields: Any) -> Claimed:
    return Claimed(prospect, 0, 0, fields)


# Grouping, pure --------------------------------------------------------------------------


def test_groups_are_exact_values_split_by_ids_per_call() -> None:
    batch = [claimed(p, custom1="realized") for p in range(1, 13)]
    batch += [claimed(p, custom1="realized", custom2="exited") for p in range(20, 24)]
    batch += [claimed(30, custom1="exited"), claimed(31, custom1="exited")]
    calls, rest = group(batch, min_group=3, ids_per_call=5)
    shapes = sorted((json.dumps(f, sort_keys=True), [c.prospect for c in m]) for f, m in calls)
    assert shapes == [
        ('{"custom1": "realized", "custom2": "exited"}', [20, 21, 22, 23]),
        ('{"custom1": "realized"}', [1, 2, 3, 4, 5]),
        ('{"custom1": "realized"}', [6, 7, 8, 9, 10]),
    ]
    assert sorted(c.prospect for c in rest) == [11, 12, 30, 31]


def test_no_group_is_ever_empty() -> None:
    calls, rest = group([], min_group=2, ids_per_call=5)
    assert (calls, rest) == ([], [])
    calls, _ = group([claimed(1, custom1="a")] * 1, min_group=2, ids_per_call=1)
    assert calls == []


def test_only_a_backlog_that_groups_is_worth_claiming_more_of() -> None:
    backfill = [claimed(p, custom1="realized") for p in range(30)]
    backfill += [claimed(p, firstName=f"n{p}") for p in range(30, 100)]
    assert mostly_one_group(backfill)
    assert not mostly_one_group([claimed(p, firstName=f"n{p}") for p in range(100)])
    assert not mostly_one_group([])


# Against the sandbox -----------------------------------------------------------------------


async def test_a_backfill_goes_by_bulk_and_the_small_groups_by_patch(rig: Factory) -> None:
    r: Rig = await rig()
    changes = {p: {"custom1": "realized"} for p in range(1, 13)}
    changes |= {p: {"custom1": "realized", "custom2": "exited"} for p in range(20, 24)}
    changes |= {30: {"custom1": "exited"}}
    await r.pending(changes)
    await r.settle_all()
    assert r.prospects() == changes
    batches = r.batches()
    assert sorted(len(b["ids"]) for b in batches) == [4, 5, 5]
    for b in batches:
        assert all(changes[p] == b["modification"] for p in b["ids"])
    bulk_ids = {p for b in batches for p in b["ids"]}
    patched = set(changes) - bulk_ids
    assert set(r.patched()) == patched and len(patched) == 3 and 30 in patched
    assert (await r.counters())["drain_bulk_delivered"] == 14
    # Delivered as with PATCH: the same value again is a no-op, costing nothing.
    before = r.sandbox.stats()["requests"]
    await r.pending({1: {"custom1": "realized"}})
    await r.settle_all()
    assert r.sandbox.stats()["requests"] == before
    figures = await BulkState(r.store.redis, r.keys).figures(D)
    assert figures["calls"] == 3 and figures["delivered"] == 14
    doc = await destination_status(
        D, store=r.store, registry=r.deliverer.registry, gate=r.deliverer.gate
    )
    assert doc is not None and doc.bulk.off is None
    assert doc.bulk.cost_per_record is not None and 0 < doc.bulk.cost_per_record < 1


async def test_a_newer_change_during_a_batch_is_sent_next_not_overwritten(rig: Factory) -> None:
    r: Rig = await rig("--bulk-records-per-s", "4")
    await r.pending({p: {"custom1": "realized"} for p in range(1, 6)})
    await r.deliverer.drain(D)
    assert len(r.batches()) == 1 and r.batches()[0]["attributes"]["state"] != "finished"
    await r.pending({3: {"custom1": "exited"}})
    await r.settle_all()
    final = r.prospects()
    assert final[3] == {"custom1": "exited"}
    assert all(final[p] == {"custom1": "realized"} for p in (1, 2, 4, 5))
    assert r.patched() == Counter({3: 1})


async def test_failed_records_are_retried_by_patch_and_fail_as_they_would(rig: Factory) -> None:
    r: Rig = await rig("--prospect-ids", "1", "1000", "--usable-custom-fields", "40")
    await r.pending({p: {"custom1": "realized"} for p in (1, 2, 5000, 3)})
    await r.pending({p: {"custom45": "realized"} for p in (10, 11, 12)})
    await r.settle_all()
    assert r.prospects() == {p: {"custom1": "realized"} for p in (1, 2, 3)}
    assert (await r.counters())["drain_bulk_item_failed"] == 4
    assert r.patched() == Counter({5000: 1, 10: 1, 11: 1, 12: 1})
    failures = list_failures(r.rclient, r.keys, destination=D)
    reasons = Counter((f["prospect"], f["reason"]) for f in failures)
    assert reasons == Counter(
        {(5000, "http_404"): 1, (10, "http_400"): 1, (11, "http_400"): 1, (12, "http_400"): 1}
    )
    assert await r.store.invalid_mappings(D) == {45}


@pytest.mark.parametrize("fault", ["stick", "cancel"])
async def test_a_stuck_or_cancelled_batch_falls_back_to_patch(rig: Factory, fault: str) -> None:
    r: Rig = await rig("--bulk-fault", fault, timeout_s=0.5)
    changes = {p: {"custom1": "realized"} for p in range(1, 6)}
    await r.pending(changes)
    await r.settle_all()
    assert r.prospects() == changes
    assert r.patched() == Counter(dict.fromkeys(changes, 1))
    assert [b["attributes"]["state"] for b in r.batches()] == ["canceled"]
    assert (await r.counters())["drain_bulk_fallback"] == 1
    assert await r.store.backlog(D) == (0, 0)


@pytest.mark.parametrize(
    ("fault", "scope"), [("forbidden", "connection"), ("not_found", "destination")]
)
async def test_a_refusal_turns_bulk_off_and_patch_goes_on(
    rig: Factory, fault: str, scope: str
) -> None:
    r: Rig = await rig("--bulk-fault", fault)
    changes = {p: {"custom1": "realized"} for p in range(1, 11)}
    await r.pending(changes)
    await r.settle_all()
    assert r.prospects() == changes
    off = await BulkState(r.store.redis, r.keys).off(D, "c", now_ms=int(time.time() * 1000))
    assert off is not None and off.scope == scope
    assert len(r.bulk_requests()) == 1  # the second group went straight to PATCH
    doc = await destination_status(
        D, store=r.store, registry=r.deliverer.registry, gate=r.deliverer.gate
    )
    assert doc is not None and doc.bulk.off is not None and doc.bulk.off.scope == scope
    found = conditions(
        snapshot_from_status(doc), LastHour(), r.deliverer.settings, pause_since_s=None, now_s=0
    )
    assert [c.kind for c in found] == ["bulk_off"]
    await r.pending({p: {"custom1": "exited"} for p in range(1, 11)})
    await r.settle_all()
    assert r.prospects() == {p: {"custom1": "exited"} for p in range(1, 11)}
    assert len(r.bulk_requests()) == 1


async def test_repeated_unreadable_batches_turn_bulk_off(rig: Factory) -> None:
    r: Rig = await rig("--bulk-fault", "malformed")
    changes = {p: {"custom1": "realized"} for p in range(1, 21)}
    await r.pending(changes)
    await r.settle_all()
    assert r.prospects() == changes
    off = await BulkState(r.store.redis, r.keys).off(D, "c", now_ms=int(time.time() * 1000))
    assert off is not None and "repeated batch failures" in off.reason


@pytest.mark.parametrize("mode", ["call", "record"])
async def test_quota_cost_per_call_or_per_record(rig: Factory, mode: str) -> None:
    r: Rig = await rig("--bulk-cost", mode, ids_per_call=20, min_group=10)
    changes = {p: {"custom1": "realized"} for p in range(1, 101)}
    await r.pending(changes)
    await r.settle_all()
    assert r.prospects() == changes
    spent = 10_000 - r.sandbox.stats()["by_user"]["test-user"]["remaining"]
    state = BulkState(r.store.redis, r.keys)
    cost = cost_per_record(await state.figures(D))
    off = await state.off(D, "c", now_ms=int(time.time() * 1000))
    assert cost is not None
    if mode == "call":
        assert spent < 30 and cost < 0.3 and off is None
    else:
        # Charged per record: bulk is turned off after the first call, and PATCH goes on;
        # never much worse than PATCH alone (100).
        assert off is not None and "charged" in off.reason
        assert spent <= 100 + 5 and cost >= 1


async def test_every_bulk_request_takes_a_permit_of_the_shared_gate(rig: Factory) -> None:
    r: Rig = await rig("--quota-limit", "3", ids_per_call=5)
    changes = {p: {"custom1": "realized"} for p in range(1, 6)}
    await r.pending(changes)
    await r.settle_all(timeout_s=20)
    assert r.prospects() == changes
    assert r.sandbox.stats()["rate_limited"] == 0


# A fault costs only what it must ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["5xx", "drop"])
async def test_a_bulk_call_failing_transiently_is_sent_again_not_by_patch(
    rig: Factory, fault: str
) -> None:
    r: Rig = await rig()
    changes = {p: {"custom1": "realized"} for p in range(1, 6)}
    await r.pending(changes)
    with outage(r, fault=fault, until="BulkModify"):
        await r.settle_all()
    assert r.prospects() == changes
    assert r.patched() == Counter()  # one bulk call again, not 5 PATCHes
    calls = [x["status"] for x in r.bulk_requests() if "BulkModify" in x["path"]]
    assert calls[0] in FAILED and calls[-1] == 200
    assert await failures_in_row(r) == 0


async def test_a_batch_item_read_failing_transiently_is_read_again(rig: Factory) -> None:
    # 5000 is unknown to Outreach: its item failed, so the items are read; the read meets
    # an outage (the polls before it too, so the batch is cancelled at its deadline).
    r: Rig = await rig("--prospect-ids", "1", "1000", timeout_s=1.0)
    changes = {p: {"custom1": "realized"} for p in (1, 2, 3, 5000)}
    await r.pending(changes)
    with outage(r, fault="5xx", start="BulkModify", until="batchItems"):
        await r.settle_all()
    assert r.prospects() == {p: {"custom1": "realized"} for p in (1, 2, 3)}
    assert r.patched() == Counter({5000: 1})  # only the failed record, not the whole batch


@pytest.mark.parametrize("cause", ["pause", "spend", "revoke"])
async def test_a_paused_or_spent_quota_or_a_refused_token_while_polling_never_turns_bulk_off(
    rig: Factory, cause: str
) -> None:
    # Three batches whose polls meet a 429 (Outreach paused, or the quota spent by another
    # integration) or a 401 until past their deadline: none of them failed.
    r: Rig = await rig("--quota-window-s", "2", ids_per_call=5, timeout_s=0.6, poll_first_s=0.3)
    changes = {p: {"custom1": "realized"} for p in range(1, 16)}
    await r.pending(changes)
    stop = threading.Event()

    def exhaust() -> None:
        while not stop.wait(0.005):
            calls = [x for x in r.bulk_requests() if "BulkModify" in x["path"]]
            if len(calls) >= 3:
                if cause == "pause":
                    r.sandbox.post("/_sandbox/quota/test-user/pause", {"reset_in_s": 1.5})
                elif cause == "revoke":
                    # Refused until past the deadline; then the connection is authorized anew.
                    r.sandbox.post("/_sandbox/tokens/revoke", {"user": "test-user"})
                    time.sleep(1.5)
                    r.sandbox.post("/_sandbox/tokens", {"access_token": "t2", "user": "test-user"})
                    r.tokens.token = "t2"
                else:
                    left = r.sandbox.get("/_sandbox/quota/test-user")["remaining"]
                    r.sandbox.post("/_sandbox/quota/test-user/spend", {"n": left})
                return

    watcher = threading.Thread(target=exhaust, daemon=True)
    watcher.start()
    try:
        await r.settle_all()
    finally:
        stop.set()
        watcher.join()
    assert r.prospects() == changes
    assert (await r.counters()).get("drain_bulk_stuck", 0) >= 1  # the quota did interfere
    off = await BulkState(r.store.redis, r.keys).off(D, "c", now_ms=int(time.time() * 1000))
    assert off is None
    assert await failures_in_row(r) == 0
