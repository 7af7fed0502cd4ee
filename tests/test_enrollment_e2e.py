"""Enrollment with real worker processes: a worker killed outright (SIGKILL) while it enrolls
leaves exactly one sequence state per prospect once another worker has taken over."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.core.keys import Keys
from app.store.prospects import encode, merge_sync
from app.store.registry import publish_sync
from tests.support import Sandbox, e2e_config, settings_env, wait_until

pytestmark = pytest.mark.integration

SEQ = 7
N = 120


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_enrollment_leaves_one_state_per_prospect(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> None:
    # Slow answers, so the kill lands while enrollments are on the wire.
    sandbox = sandbox_factory("--fault-latency-ms", "20", "120", "--fault-seed", "4")
    sandbox.post("/_sandbox/sequences", {"sequences": [{"id": SEQ, "name": "s"}]})
    mailbox = {"id": 45, "user": "test-user", "email": "u@x.com", "default": True}
    sandbox.post("/_sandbox/mailboxes", {"mailboxes": [mailbox]})
    # A short drain budget: the dead worker's drain slots expire soon (budget + lease).
    env = settings_env(
        prefix,
        sandbox,
        COALESCE_WINDOW_MS="0",
        LEASE_MS="3000",
        OUTREACH_TIMEOUT_S="2",
        DRAIN_BUDGET_S="2",
    )
    keys = Keys(prefix)
    sequencing = {"sequences": {"aud-4": {"sequence": SEQ, "mailbox": 45}}, "per_drain": 40}
    publish_sync(rclient, keys, e2e_config(sequencing=sequencing))
    victim = worker_factory(env, name="victim")
    now = int(time.time() * 1000)
    changes = {p: [("custom4", encode("realized"), now)] for p in range(1, N + 1)}
    merge_sync(rclient, keys, "e2e", changes, now_ms=now, window_ms=0)

    def states() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = sandbox.get("/_sandbox/sequence-states")["states"]
        return found

    wait_until(lambda: len(states()) >= 20, timeout_s=30, what="enrollments", every_s=0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    sending = sum(
        json.loads(v)["st"] == "sending" for v in rclient.hvals(keys.enroll_states("e2e"))
    )
    worker_factory(env, name="survivor")

    def settled() -> bool:
        records = [json.loads(v) for v in rclient.hvals(keys.enroll_states("e2e"))]
        return len(records) == N and all(r["st"] == "enrolled" for r in records)

    wait_until(settled, timeout_s=60, what="every enrollment settled", every_s=0.2)
    per_prospect = Counter(s["prospect_id"] for s in states())
    log = sandbox.get("/_sandbox/requests?since=0")["requests"]
    posts = Counter(
        r["status"] for r in log if r["method"] == "POST" and "sequenceStates" in r["path"]
    )
    found = sum(
        int(v) for k, v in rclient.hgetall(keys.enroll_counts("e2e")).items() if b"found" in k
    )
    print(f"\nenrollment kill: prospects={N} sending at the kill={sending} posts={dict(posts)} "
          f"found by lookup={found}")  # fmt: skip
    assert per_prospect == Counter(range(1, N + 1))  # exactly one state each
    assert sending > 0  # the kill really left enrollments of unknown outcome
    assert posts.get(422, 0) == 0  # none was sent again blindly
