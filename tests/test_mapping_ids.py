"""Mapping IDs that come with the data (``mapping_ids: "data"``), against real Redis."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.cli import status_table
from app.config.destinations import ConfigError, Destination, parse_config
from app.core.keys import Keys
from app.ingest.batch import ingest_sync
from app.ingest.report import Batch
from app.ops.alerts import LastHour, conditions, snapshot_from_status
from app.ops.status import destination_status
from app.ratelimit.gate import gate_for
from app.store.audience_map import forget_sync, learned_sync
from app.store.prospects import ProspectStore
from app.store.registry import Registry, publish_sync
from tests.support import TEST_REDIS_URL, e2e_config, make_settings, settings_env

D = "aep"


def member(status: str = "realized", mapping_id: object = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": status, "lastQualificationTime": "2026-11-20T13:15:49Z"}
    if mapping_id is not None:
        doc["mappingId"] = mapping_id
    return {**doc, **extra}


def profile(pid: int, audiences: dict[str, dict[str, Any]], **attrs: Any) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": str(pid)}]},
        "segmentMembership": {"ups": audiences},
        "attributes": {k: {"value": v} for k, v in attrs.items()},
    }


@pytest.fixture
def dest(prefix: str, rclient: redis.Redis) -> Destination:
    config = e2e_config(D, audiences={}, mapping_ids="data")
    publish_sync(rclient, Keys(prefix), config)
    return config.destination(D)


def send(rclient: redis.Redis, prefix: str, dest: Destination, *profiles: Any) -> Batch:
    return ingest_sync(rclient, Keys(prefix), dest, list(profiles), window_ms=1000)


def pending(rclient: redis.Redis, prefix: str, pid: int) -> dict[str, Any]:
    raw = rclient.hgetall(Keys(prefix).pending(D, pid))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def counters(rclient: redis.Redis, prefix: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in rclient.hgetall(Keys(prefix).counters(D)).items()}


def test_first_mapping_is_learned_and_kept_for_memberships_without_one(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    send(rclient, prefix, dest, profile(1, {"aud-a": member(mapping_id="7")}))
    send(rclient, prefix, dest, profile(2, {"aud-a": member("exited")}))
    assert pending(rclient, prefix, 1) == {"custom7": "realized"}
    assert pending(rclient, prefix, 2) == {"custom7": "exited"}
    assert learned_sync(rclient, Keys(prefix), D) == {"aud-a": 7}
    assert counters(rclient, prefix)["m7:received:realized"] == 1


def test_a_changed_mapping_id_moves_the_audience_and_is_counted_and_kept_as_an_issue(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    send(rclient, prefix, dest, profile(1, {"aud-a": member(mapping_id=7)}))
    send(rclient, prefix, dest, profile(2, {"aud-a": member(mapping_id=9)}))
    send(rclient, prefix, dest, profile(3, {"aud-a": member()}))
    assert pending(rclient, prefix, 2) == {"custom9": "realized"}
    assert pending(rclient, prefix, 3) == {"custom9": "realized"}
    assert counters(rclient, prefix)["mapping_changes"] == 1
    issue = json.loads(rclient.hget(Keys(prefix).mapping_issues(D), "aud-a") or b"{}")
    assert issue["kind"] == "changed"
    assert (issue["mapping_id"], issue["previous"]) == (9, 7)
    # The freed mapping ID may be taken by another audience.
    send(rclient, prefix, dest, profile(4, {"aud-b": member(mapping_id=7)}))
    assert pending(rclient, prefix, 4) == {"custom7": "realized"}


def test_a_mapping_id_held_by_another_audience_leaves_out_only_that_audience(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    send(rclient, prefix, dest, profile(1, {"aud-a": member(mapping_id=7)}))
    batch = send(
        rclient,
        prefix,
        dest,
        profile(2, {"aud-b": member(mapping_id=7), "aud-c": member(mapping_id=8)}),
    )
    assert pending(rclient, prefix, 2) == {"custom8": "realized"}
    doc = batch.report.as_dict(results=batch.results)
    assert doc["accepted"] == 1
    (left_out,) = doc["profiles"][0]["audiences_rejected"]
    assert left_out["audience"] == "aud-b"
    assert "mapping ID 7 is held by audience aud-a" in left_out["reason"]
    assert counters(rclient, prefix)["mapping_conflicts"] == 1
    issue = json.loads(rclient.hget(Keys(prefix).mapping_issues(D), "aud-b") or b"{}")
    assert (issue["kind"], issue["held_by"]) == ("conflict", "aud-a")
    assert learned_sync(rclient, Keys(prefix), D) == {"aud-a": 7, "aud-c": 8}


def test_an_invalid_mapping_id_rejects_that_audience_never_the_request(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    batch = send(
        rclient,
        prefix,
        dest,
        profile(1, {"aud-a": member(mapping_id="abc"), "aud-b": member(mapping_id=" 12 ")}),
        profile(2, {"aud-c": member(mapping_id=151)}),
        profile(3, {"aud-d": member(mapping_id="0")}, firstName="Ada"),
        profile(4, {"aud-e": member(mapping_id=True)}),
    )
    doc = batch.report.as_dict(results=batch.results)
    assert pending(rclient, prefix, 1) == {"custom12": "realized"}
    assert pending(rclient, prefix, 3) == {"firstName": "Ada"}
    assert [p["outcome"] for p in doc["profiles"]] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert (
        "segmentMembership.ups.aud-a.mappingId: 'abc' is not a mapping ID"
        in (doc["profiles"][0]["audiences_rejected"][0]["reason"])
    )
    assert "151 is not a mapping ID (an integer from 1 to 150)" in doc["profiles"][1]["reason"]
    assert counters(rclient, prefix)["mapping_ids_invalid"] == 4


def test_two_audiences_racing_for_one_mapping_id_never_both_get_it(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    def one(i: int) -> None:
        client = redis.Redis(connection_pool=rclient.connection_pool)
        send(client, prefix, dest, profile(100 + i, {f"aud-{i}": member(mapping_id=5)}))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(16)))
    table = learned_sync(rclient, Keys(prefix), D)
    assert list(table.values()) == [5]
    assert counters(rclient, prefix)["mapping_conflicts"] == 15
    holders = [pid for pid in range(100, 116) if pending(rclient, prefix, pid)]
    assert len(holders) == 1


def test_forgetting_an_audience_frees_its_mapping_id(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    send(rclient, prefix, dest, profile(1, {"aud-a": member(mapping_id=7)}))
    assert forget_sync(rclient, Keys(prefix), D, "aud-a") == 7
    send(rclient, prefix, dest, profile(2, {"aud-b": member(mapping_id=7)}))
    assert pending(rclient, prefix, 2) == {"custom7": "realized"}


def test_mapping_ids_from_the_data_exclude_a_configured_table() -> None:
    with pytest.raises(ConfigError) as exc:
        e2e_config(D, mapping_ids="data")
    assert 'audiences must be empty when mapping_ids is "data"' in str(exc.value)
    with pytest.raises(ConfigError):
        parse_config({"destinations": [{"id": D, "mapping_ids": "alias"}]})


async def test_status_shows_learned_audiences_and_issues_and_they_alert_for_an_hour(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    send(rclient, prefix, dest, profile(1, {"aud-a": member(mapping_id=7)}))
    send(rclient, prefix, dest, profile(2, {"aud-b": member(mapping_id=7)}))
    send(rclient, prefix, dest, profile(3, {"aud-c": member(mapping_id=3)}))
    send(rclient, prefix, dest, profile(4, {"aud-c": member(mapping_id=4)}))
    settings = make_settings(settings_env(prefix, None))
    client = aioredis.from_url(TEST_REDIS_URL)
    try:
        doc = await destination_status(
            D,
            store=ProspectStore(client, settings.keys),
            registry=Registry(client, settings.keys),
            gate=gate_for(client, settings),
        )
    finally:
        await client.aclose()
    assert doc is not None and doc.mapping_ids == "data"
    rows = {r.mapping_id: r for r in doc.audiences}
    assert (rows[7].audience, rows[4].audience) == ("aud-a", "aud-c")
    assert "asked for mapping ID 7, held by audience aud-a" in (rows[7].mapping_issue or "")
    assert "moved from mapping ID 3 to 4: custom3 is no longer written" in (
        rows[4].mapping_issue or ""
    )
    assert rows[3].audience is None  # custom3's counts stay, no longer mapped
    assert "held by audience aud-a" in status_table.render_table([doc])
    assert doc.as_json()["mapping_issues"][0]["audience"] in ("aud-b", "aud-c")
    snap = snapshot_from_status(doc)
    now_s = time.time()
    found = conditions(snap, LastHour(), settings, pause_since_s=None, now_s=now_s)
    assert sorted(c.key for c in found) == [
        f"mapping_changed:{D}:aud-c:4",
        f"mapping_conflict:{D}:aud-b:7",
    ]
    later = conditions(snap, LastHour(), settings, pause_since_s=None, now_s=now_s + 3601)
    assert later == []
