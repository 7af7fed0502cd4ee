"""Bulk delivery end to end: producer, real Celery workers, Redis and the sandbox over HTTP."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.support import (
    Sandbox,
    counts,
    differing,
    e2e_config,
    idle,
    make_settings,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.integration

BULK = {"enabled": True, "min_group": 10, "ids_per_call": 50, "timeout_s": 4.0}
FAST_POLL = {"poll_first_s": 0.1, "poll_max_s": 0.5}


def profiles(ids: range | list[int], status: str, at: str) -> list[dict[str, Any]]:
    membership = {"aud-1": {"status": status, "lastQualificationTime": at}}
    return [
        {"identityMap": {"OutreachId": [{"id": str(p)}]}, "segmentMembership": {"ups": membership}}
        for p in ids
    ]


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_batch_loses_nothing_and_its_batch_cannot_overwrite(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> None:
    # Slow batches: 25 s for 50 ids, past their 8 s deadline: the victim dies with every batch
    # still running, and they still run when the survivor cancels them.
    sandbox = sandbox_factory("--bulk-records-per-s", "2")
    env = settings_env(
        prefix, sandbox, COALESCE_WINDOW_MS="100", LEASE_MS="3000", OUTREACH_TIMEOUT_S="2"
    )
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config(bulk={**BULK, **FAST_POLL, "timeout_s": 8.0}))
    producer = Producer(make_settings(env))
    # The gate learns Outreach's figure from a first PATCH (bulk waits for it).
    producer.send("e2e", profiles([9000], "realized", "2026-11-01T00:00:00Z"))
    victim = worker_factory(env, name="victim", own_group=True)
    wait_until(lambda: idle(rclient, keys, "e2e"), timeout_s=30, what="the first PATCH")
    producer.send("e2e", profiles(range(1, 301), "realized", "2026-11-02T00:00:00Z"))
    # Killed once every batch Outreach made is in the victim's record and nothing waits to be
    # claimed, for a second on end: mid-batch, not between a call's answer and its record (a
    # kill there leaves a batch nobody can cancel; app/delivery/bulk.py keeps that short).
    seen: list[tuple[int, int, int]] = []

    def wave_recorded() -> bool:
        made = sandbox.stats()["bulk"]["batches"]
        seen.append((made, rclient.hlen(keys.bulk_batches("e2e")), rclient.zcard(keys.due("e2e"))))
        last = seen[-50:]  # 1 s of polls
        return made >= 2 and len(last) == 50 and all(x == (made, made, 0) for x in last)

    wait_until(wave_recorded, timeout_s=30, what="the victim's recorded bulk calls", every_s=0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    # Newer changes while the dead worker's batches hold the claims: they must win.
    producer.send("e2e", profiles(range(1, 301, 7), "exited", "2026-11-03T00:00:00Z"))
    worker_factory(env, name="survivor")
    expected = {p: {"custom1": "realized"} for p in range(1, 301)}
    expected |= {p: {"custom1": "exited"} for p in range(1, 301, 7)}
    expected[9000] = {"custom1": "realized"}

    def done() -> bool:
        return idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected)

    def orphans_cancelled() -> bool:
        return counts(rclient, keys, "e2e").get("drain_bulk_orphans_cancelled", 0) >= 1

    wait_until(orphans_cancelled, timeout_s=60, what="the orphaned batches cancelled")
    # Cancelled, they cannot write any more: Outreach may be fast again for what follows.
    sandbox.post("/_sandbox/config", {"bulk_records_per_s": 2000})
    wait_until(done, timeout_s=120, what="every prospect's expected state", every_s=0.5)
    seen = counts(rclient, keys, "e2e")
    assert seen.get("lease_expired", 0) >= 1
    assert seen.get("drain_bulk_orphans_cancelled", 0) >= 1
    assert seen.get("prospects_failed", 0) == 0
    batches = sandbox.get("/_sandbox/batches")
    assert "canceled" in {b["attributes"]["state"] for b in batches}
    # Nothing the dead worker's batches still held can land after the newer values.
    assert sandbox.prospects() == expected
    # Its prospects went back to bulk groups: only a claim's leftovers smaller than
    # min_group (fewer than 10 of one value in a claim of up to 50) cost a PATCH each; by
    # PATCH, the 300 would have cost 300.
    patched = {r["prospect_id"] for r in sandbox.patches() if r["status"] == 200}
    assert 9000 in patched and len(patched - {9000}) <= 60, sorted(patched)


@pytest.mark.timeout(120)
def test_a_backfill_through_the_workers_costs_requests_per_group(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> None:
    sandbox = sandbox_factory("--bulk-records-per-s", "2000", "--bulk-max-ids", "1000")
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="100")
    keys = Keys(prefix)
    publish_sync(
        rclient, keys, e2e_config(bulk={**BULK, **FAST_POLL, "ids_per_call": 500, "min_group": 50})
    )
    producer = Producer(make_settings(env))
    producer.send("e2e", profiles([9000], "realized", "2026-11-01T00:00:00Z"))
    worker_factory(env, name="w")
    wait_until(lambda: idle(rclient, keys, "e2e"), timeout_s=30, what="the first PATCH")
    producer.send("e2e", profiles(range(1, 3001), "realized", "2026-11-02T00:00:00Z"))
    expected = {p: {"custom1": "realized"} for p in [*range(1, 3001), 9000]}

    def done() -> bool:
        return idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected)

    wait_until(done, timeout_s=90, what="the backfill", every_s=0.3)
    stats = sandbox.stats()
    assert stats["bulk"]["records_modified"] >= 2500
    assert stats["requests"] < 300, stats  # PATCH alone: 3,001
