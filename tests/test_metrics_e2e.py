"""Dataflow metrics after a real run (producer -> Redis -> Celery worker -> sandbox over HTTP)
equal what the sandbox received, per destination and per audience, in the hour and in total."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.cli.sample import generate
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.ops.status import collect_status
from app.store.registry import publish_sync
from tests.support import (
    AUDIENCES,
    Sandbox,
    differing,
    e2e_config,
    idle,
    make_settings,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.integration

#: The sandbox knows prospects up to this id: the one beyond it fails with a 404.
KNOWN_UPTO = 1200
UNKNOWN = 5000


def _expected_ingest(profiles: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str]]:
    """Per destination excluded reasons, and per audience received/excluded, from the raw
    profiles (independently of the service's code)."""
    excluded: Counter[str] = Counter()
    audience: Counter[str] = Counter()
    for p in profiles:
        ids = [str(i["id"]) for i in p["identityMap"].get("OutreachId", [])]
        reason = None if any(i.isdigit() for i in ids) else "bad_identity" if ids else "no_identity"
        if reason:
            excluded[reason] += 1
        for aud, m in p["segmentMembership"]["ups"].items():
            if aud in AUDIENCES:
                audience[f"{AUDIENCES[aud]}:received:{m['status']}"] += 1
                if reason:
                    audience[f"{AUDIENCES[aud]}:excluded:{reason}"] += 1
    return excluded, audience


def _status(env: dict[str, str], hours: int = 2) -> dict[str, Any]:
    [doc] = asyncio.run(collect_status(make_settings(env), "e2e", hours=hours, failures=5))
    return doc.as_json()


def test_metrics_match_what_the_sandbox_received(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> None:
    sandbox = sandbox_factory("--prospect-ids", "1", str(KNOWN_UPTO))
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="200")
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    worker_factory(env, name="m", concurrency=2)
    sample = generate(events=800, prospects=120, audiences=AUDIENCES, seed=23)
    unknown = {
        "identityMap": {"OutreachId": [{"id": str(UNKNOWN)}]},
        "segmentMembership": {"ups": {"aud-4": {"status": "realized"}}},
    }
    profiles = [*sample.profiles, unknown]
    producer = Producer(make_settings(env))
    producer.send("e2e", profiles)
    expected = sample.expected()
    wait_until(
        lambda: idle(rclient, keys, "e2e") and not differing(sandbox.prospects(), expected),
        timeout_s=60,
        what="every prospect to land",
        every_s=0.2,
    )
    wait_until(lambda: bool(rclient.hlen(keys.failures("e2e"))), timeout_s=10, what="the 404")

    stats = sandbox.stats()
    state = sandbox.prospects()
    log = sandbox.get("/_sandbox/requests")["requests"]
    doc = _status(env)
    totals, window = doc["metrics"]["totals"], doc["metrics"]["window"]

    # Per destination: what the producer sent, what Outreach received.
    excluded, per_audience = _expected_ingest(profiles)
    assert totals["profiles_received"] == len(profiles)
    assert totals["profiles_excluded"] == sum(excluded.values()) == sample.excluded > 0
    assert totals["excluded_by_reason"] == dict(excluded)
    assert totals["profiles_rejected"] == 0
    assert totals["requests"] == stats["requests"] == len(log)
    assert totals["prospects_activated"] == stats["patches_ok"] == len(expected)
    assert totals["rate_limited"] == stats["rate_limited"] == 0
    assert totals["failed"] == 1 and totals["failed_by_reason"] == {"http_404": 1}
    patched = [r for r in log if r["method"] == "PATCH" and r["status"] == 200]
    assert totals["fields_activated"] == sum(len(r["attributes"]) for r in patched)

    # Per audience: received by status from the profiles; activated by status from what the
    # sandbox holds (one PATCH per prospect) and from its request log.
    rows = {row["mapping_id"]: row for row in doc["audiences"]}
    assert set(rows) == set(AUDIENCES.values())
    for audience, n in AUDIENCES.items():
        t = rows[n]["totals"]
        assert rows[n]["audience"] == audience and rows[n]["field"] == f"custom{n}"
        received = {
            k.split(":")[2]: v for k, v in per_audience.items() if k.startswith(f"{n}:received:")
        }
        assert t["received_by_status"] == received
        held = Counter(s[f"custom{n}"] for s in state.values() if f"custom{n}" in s)
        assert t["activated_by_status"] == dict(held)
        assert t["activated"] == sum(f"custom{n}" in r["attributes"] for r in patched)
        excl = {
            k.split(":")[2]: v for k, v in per_audience.items() if k.startswith(f"{n}:excluded:")
        }
        assert t["excluded_by_reason"] == excl
    assert rows[4]["totals"]["failed_by_reason"] == {"http_404": 1}
    [failure] = doc["recent_failures"]
    assert failure["reason"] == "http_404" and failure["fields"] == ["custom4"]

    print(
        f"\nmetrics e2e: received={totals['profiles_received']} excluded={excluded} "
        f"requests={totals['requests']} activated={totals['prospects_activated']} "
        f"fields={totals['fields_activated']} audiences="
        + " ".join(f"m{n}:{rows[n]['totals']['activated_by_status']}" for n in sorted(rows))
    )
    # A fresh run: the hourly window holds every count of the totals.
    assert {k: v for k, v in window.items() if k not in ("hours", "from", "to")} == totals
    assert all(row["window"] == row["totals"] for row in doc["audiences"])
    assert doc["pending"] == doc["in_flight"] == 0 and doc["lag_s"] is None

    # The same profiles again: Outreach holds every value, so nothing is sent (no-op skips).
    before = stats["requests"]
    producer.send("e2e", sample.profiles)
    wait_until(
        lambda: idle(rclient, keys, "e2e") and not rclient.hlen(keys.first_seen("e2e")),
        timeout_s=30,
        what="the resend to settle",
        every_s=0.2,
    )
    again = _status(env)["metrics"]["totals"]
    assert sandbox.stats()["requests"] == before
    assert again["requests"] == before
    assert again["prospects_skipped_noop"] == len(expected)
    assert again["fields_skipped_noop"] == sum(len(f) for f in expected.values())
    print(
        f"resend: noop prospects={again['prospects_skipped_noop']} "
        f"fields={again['fields_skipped_noop']}"
    )
    noop = {row["mapping_id"]: row["totals"]["skipped_noop"] for row in _status(env)["audiences"]}
    for n in AUDIENCES.values():
        assert noop[n] == sum(f"custom{n}" in f for f in expected.values())
    producer.close()
