"""Outreach's refusals, end to end: each error class ends where an operator can see it, and
a refused field does not take the prospect's other fields down with it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.config.destinations import parse_config
from app.connections.crypto import default_cipher
from app.connections.records import ConnectionStoreSync
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.support import Sandbox, idle, make_settings, settings_env, wait_for_holds, wait_until

pytestmark = pytest.mark.integration


def config(**dest: Any) -> Any:
    return parse_config(
        {
            "connections": [{"id": "c", "user": "test-user", "access_token": "test-token"}],
            "destinations": [{"id": "d", "name": "d", "connection": "c", **dest}],
        }
    )


def profile(pid: int, audiences: dict[str, str], **attrs: Any) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": str(pid)}]},
        "segmentMembership": {"ups": {a: {"status": s} for a, s in audiences.items()}},
        "attributes": {k: {"value": v} for k, v in attrs.items()},
    }


def failures(rclient: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [json.loads(v) for v in rclient.hgetall(keys.failures("d")).values()]


def run(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
    dest: dict[str, Any],
    profiles: list[dict[str, Any]],
) -> Keys:
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="0", CLAIM_BATCH="4")
    keys = Keys(prefix)
    publish_sync(rclient, keys, config(**dest))
    worker_factory(env, concurrency=1)
    Producer(make_settings(env)).send("d", profiles)
    wait_until(lambda: idle(rclient, keys, "d"), timeout_s=30, what="the backlog to settle")
    return keys


def test_unusable_custom_field_fails_alone_and_its_mapping_id_stops_costing_requests(
    prefix: str, rclient: redis.Redis, sandbox_factory: Any, worker_factory: Any
) -> None:
    sandbox = sandbox_factory("--usable-custom-fields", "5")
    dest = {"audiences": {"good": 1, "unusable": 7}, "attributes": {"firstName": "firstName"}}
    profiles = [
        profile(100 + p, {"good": "realized", "unusable": "realized"}, firstName=f"P{p}")
        for p in range(20)
    ]
    keys = run(prefix, rclient, sandbox, worker_factory, dest, profiles)
    state = sandbox.prospects()
    assert all(state[100 + p] == {"custom1": "realized", "firstName": f"P{p}"} for p in range(20))
    failed = failures(rclient, keys)
    assert sorted(f["prospect"] for f in failed) == list(range(100, 120))
    assert all(f["fields"] == {"custom7": "realized"} and f["mapping_ids"] == [7] for f in failed)
    reasons = Counter(f["reason"] for f in failed)
    assert reasons["invalid_mapping"] > 0 and reasons["http_400"] >= 1
    # Once marked, the mapping ID costs no request: far fewer 400s than prospects.
    assert sandbox.stats()["by_status"].get("400", 0) == reasons["http_400"] < 20
    assert rclient.smembers(keys.invalid_mappings("d")) == {b"7"}
    # Publishing the (corrected) configuration lets the mapping ID be tried again.
    publish_sync(rclient, keys, config(**dest))
    assert rclient.smembers(keys.invalid_mappings("d")) == set()


def test_unknown_prospect_and_rejected_value_are_failed_with_outreachs_reason(
    prefix: str, rclient: redis.Redis, sandbox_factory: Any, worker_factory: Any
) -> None:
    sandbox = sandbox_factory("--prospect-ids", "1", "1000")
    dest = {"audiences": {"a": 1}, "attributes": {"title": "title"}}
    profiles = [
        profile(5, {"a": "realized"}),
        profile(5000, {"a": "realized"}),  # no such prospect
    ]
    keys = run(prefix, rclient, sandbox, worker_factory, dest, profiles)
    failed = {f["prospect"]: f for f in failures(rclient, keys)}
    assert sandbox.prospects() == {5: {"custom1": "realized"}}
    assert list(failed) == [5000]
    assert failed[5000]["reason"] == "http_404"
    assert failed[5000]["error_id"] == "resourceNotFound"
    assert failed[5000]["title"]  # Outreach's own title of the error
    assert "5000" in failed[5000]["detail"]
    counters = rclient.hgetall(keys.counters("d"))
    assert int(counters[b"failed:http_404"]) == 1


def test_a_refusal_naming_no_field_is_bisected_so_the_good_fields_land(
    prefix: str, rclient: redis.Redis, sandbox_factory: Any, worker_factory: Any
) -> None:
    sandbox = sandbox_factory("--usable-custom-fields", "5", "--no-field-pointers")
    dest = {"audiences": {"good": 1, "unusable": 7}, "attributes": {"firstName": "firstName"}}
    profiles = [profile(200, {"good": "realized", "unusable": "exited"}, firstName="Ada")]
    keys = run(prefix, rclient, sandbox, worker_factory, dest, profiles)
    assert sandbox.prospects() == {200: {"custom1": "realized", "firstName": "Ada"}}
    [failed] = failures(rclient, keys)
    assert (failed["fields"], failed["reason"]) == ({"custom7": "exited"}, "http_400")
    # The whole PATCH, then halves: [custom1] ok, [custom7, firstName] refused, then each.
    assert sandbox.stats()["requests"] == 5
    assert rclient.smembers(keys.invalid_mappings("d")) == {b"7"}


def test_transient_failures_past_the_maximum_age_become_dead_letters(
    prefix: str, rclient: redis.Redis, sandbox_factory: Any, worker_factory: Any
) -> None:
    sandbox = sandbox_factory("--fault-5xx-rate", "1.0")
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="0", MAX_RETRY_AGE_S="1.5")
    keys = Keys(prefix)
    publish_sync(rclient, keys, config(audiences={"a": 1}))
    worker_factory(env, concurrency=1)
    Producer(make_settings(env)).send("d", [profile(7, {"a": "realized"})])
    wait_until(lambda: bool(failures(rclient, keys)), timeout_s=30, what="a dead letter")
    [failed] = failures(rclient, keys)
    assert failed["reason"] == "retries_exhausted" and failed["fields"] == {"custom1": "realized"}
    assert failed["attempts"] >= 2 and failed["status"] in (500, 502, 503)
    assert sandbox.stats()["requests"] == failed["attempts"]  # retried, then stopped
    assert idle(rclient, keys, "d")


def test_a_refused_token_that_cannot_be_refreshed_pauses_until_a_new_one_is_installed(
    prefix: str, rclient: redis.Redis, sandbox_factory: Any, worker_factory: Any
) -> None:
    # A token from a file (no refresh token) that Outreach refuses: nothing can make it work
    # again, so the connection waits for an operator instead of turning every change into a
    # dead letter after MAX_RETRY_AGE_S.
    sandbox = sandbox_factory()
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="0", MAX_RETRY_AGE_S="0.5")
    env["REAUTH_HOLD_S"] = "0.2"
    keys = Keys(prefix)
    conn = {"id": "c", "user": "test-user", "access_token": "revoked-token"}
    dest = {"id": "d", "name": "d", "connection": "c", "audiences": {"a": 1}}
    publish_sync(rclient, keys, parse_config({"connections": [conn], "destinations": [dest]}))
    worker_factory(env, concurrency=1)
    producer = Producer(make_settings(env))
    producer.send("d", [profile(7, {"a": "realized"})])
    store = ConnectionStoreSync(rclient, keys, default_cipher())

    def state() -> str | None:
        rec = store.get("c")
        return None if rec is None else rec.state

    wait_until(lambda: state() == "reauth_required", timeout_s=30, what="reauth_required")
    rec = store.get("c")
    assert rec is not None and "401" in (rec.reason or "") and "refresh token" in rec.reason
    assert "revoked-token" not in (rec.reason or "")
    # Paused for twice MAX_RETRY_AGE_S, the drain looking again and again: nothing is retried
    # or failed.
    wait_for_holds(rclient, keys, "d", looks=3, span_s=1.0)
    assert sandbox.stats()["by_status"] == {"401": 1}
    assert failures(rclient, keys) == []
    producer.send("d", [profile(7, {"a": "exited"})])
    conn["access_token"] = "test-token"  # an operator installs a working token
    publish_sync(rclient, keys, parse_config({"connections": [conn], "destinations": [dest]}))
    wait_until(
        lambda: sandbox.prospects().get(7, {}).get("custom1") == "exited",
        timeout_s=30,
        what="the newest value delivered once the token works",
    )
    assert state() == "active" and failures(rclient, keys) == []
