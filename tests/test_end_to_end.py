"""Profile events -> Redis -> real Celery worker processes -> the sandbox over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.cli.sample import Sample, generate
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


def wait_delivered(sandbox: Sandbox, rclient: redis.Redis, keys: Keys, sample: Sample) -> None:
    expected = sample.expected()

    def done() -> bool:
        return idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected)

    wait_until(done, timeout_s=90, what="every prospect to reach its expected state", every_s=0.3)


def test_events_coalesce_into_one_patch_per_prospect_and_land_exactly(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
) -> None:
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="1500")
    settings = make_settings(env)
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    worker_factory(env, name="a")
    worker_factory(env, name="b")

    sample = generate(events=3000, prospects=250, audiences=AUDIENCES, seed=11)
    wave1 = 2400
    producer = Producer(settings)
    first = producer.send("e2e", sample.profiles[:wave1])
    excluded_first = sum(1 for p in sample.profiles[:wave1] if _is_excluded(p))
    assert first.report.excluded == excluded_first > 0
    assert first.report.rejected == 0
    assert first.report.accepted == wave1 - excluded_first
    assert first.report.ignored_audiences > 0

    expected1 = sample.expected(upto=wave1)
    assert len(expected1) >= 200
    wait_until(
        lambda: idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected1),
        timeout_s=90,
        what="wave 1 to land",
        every_s=0.3,
    )
    stats1 = sandbox.stats()
    # Coalescing: every prospect with something to send cost exactly one PATCH.
    assert stats1["patches_ok"] == len(expected1)
    assert set(stats1["patch_count_by_prospect"].values()) == {1}
    assert stats1["rate_limited"] == 0

    # Wave 2: later events for the same prospects. Only prospects whose final state differs
    # from what Outreach already holds may cost a request (no-op skipping).
    producer.send("e2e", sample.profiles[wave1:], start=wave1)
    wait_delivered(sandbox, rclient, keys, sample)
    final = sample.expected()
    changed = [p for p in final if final[p] != expected1.get(p)]
    stats2 = sandbox.stats()
    print(
        f"\nend to end: events={len(sample.profiles)} prospects={len(final)} "
        f"patches wave1={stats1['patches_ok']} wave2={stats2['patches_ok'] - stats1['patches_ok']} "
        f"(prospects changed in wave 2: {len(changed)})"
    )
    assert stats2["patches_ok"] - stats1["patches_ok"] == len(changed)
    assert stats2["requests"] == stats2["patches_ok"]
    counters = counts(rclient, keys, "e2e")
    assert counters["profiles_received"] == len(sample.profiles)
    assert counters["drain_delivered"] == stats2["patches_ok"]
    producer.close()

    # What an operator sees: both workers alive, by name.
    shown = subprocess.run(
        [sys.executable, "-m", "app", "status"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"workers: 2 alive ({prefix}-a@" in shown and f"{prefix}-b@" in shown


def _is_excluded(profile: dict[str, Any]) -> bool:
    ids = profile["identityMap"].get("OutreachId", [])
    return not any(str(i["id"]).isdigit() for i in ids)
