"""Nothing lost under faults: 5xx, latency, dropped connections and a worker killed outright."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.cli.sample import generate
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.support import (
    AUDIENCES,
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


@pytest.mark.timeout(240)
def test_faults_and_a_killed_worker_lose_nothing(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> None:
    sandbox = sandbox_factory(
        "--fault-5xx-rate", "0.2", "--fault-latency-ms", "20", "150",
        "--fault-drop-rate", "0.05", "--fault-seed", "3",
    )  # fmt: skip
    env = settings_env(
        prefix, sandbox, COALESCE_WINDOW_MS="200", LEASE_MS="3000", CLAIM_BATCH="20",
        OUTREACH_TIMEOUT_S="2", RETRY_BACKOFF_BASE_S="0.2",
    )  # fmt: skip
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    victim = worker_factory(env, name="victim", own_group=True)
    producer = Producer(make_settings(env))
    sample = generate(events=1500, prospects=300, audiences=AUDIENCES, seed=5)
    for start in range(0, len(sample.profiles), 300):  # waves: later ones arrive mid-run
        producer.send("e2e", sample.profiles[start : start + 300], start=start)
        time.sleep(0.3)
    # The victim is the only worker: killed while it holds claims, it takes them down with it.
    wait_until(
        lambda: sandbox.stats()["patches_ok"] > 50 and rclient.zcard(keys.leases("e2e")) > 0,
        timeout_s=30,
        what="the victim to hold claims",
        every_s=0.02,
    )
    held = rclient.zcard(keys.leases("e2e"))
    os.killpg(victim.pid, signal.SIGKILL)
    worker_factory(env, name="survivor")
    expected = sample.expected()

    def done() -> bool:
        return idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected)

    wait_until(done, timeout_s=120, what="every prospect's expected state", every_s=0.5)
    stats = sandbox.stats()
    counters = counts(rclient, keys, "e2e")
    lost = len(differing(sandbox.prospects(), expected))
    print(
        f"\nfaults: prospects={len(expected)} requests={stats['requests']} "
        f"ok={stats['patches_ok']} by_status={stats['by_status']} "
        f"retried={counters.get('drain_error_retryable', 0)} "
        f"lease_expired={counters.get('lease_expired', 0)} "
        f"late_settles={counters.get('late_settles', 0)} "
        f"failed={counters.get('prospects_failed', 0)} lost={lost}"
    )
    assert lost == 0
    assert counters.get("prospects_failed", 0) == 0
    assert counters.get("lease_expired", 0) >= 1, f"{held} claims held at the kill"
    assert counters.get("drain_error_retryable", 0) > 0  # the faults really happened


def test_sigterm_lets_a_worker_finish_what_it_holds_and_exit_cleanly(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> None:
    sandbox = sandbox_factory("--fault-latency-ms", "80", "160")
    env = settings_env(
        prefix, sandbox, COALESCE_WINDOW_MS="0", DRAIN_BUDGET_S="3", HTTP_CONCURRENCY="4"
    )
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    first = worker_factory(env, name="first")
    sample = generate(events=1200, prospects=600, audiences=AUDIENCES, seed=9)
    Producer(make_settings(env)).send("e2e", sample.profiles)
    wait_until(lambda: sandbox.stats()["patches_ok"] > 20, timeout_s=30, what="deliveries")
    first.terminate()
    assert first.wait(timeout=30) == 0  # warm shutdown: the running drain ends, then exit
    stopped_at = sandbox.stats()["patches_ok"]
    worker_factory(env, name="second")
    expected = sample.expected()
    wait_until(
        lambda: idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected),
        timeout_s=60,
        what="the second worker to finish",
        every_s=0.3,
    )
    assert 0 < stopped_at < len(expected)  # the stop really came mid-run
    counters = counts(rclient, keys, "e2e")
    assert counters.get("lease_expired", 0) == 0  # nothing was left claimed by the stopped one
