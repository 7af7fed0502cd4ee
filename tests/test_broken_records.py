"""A stored record that cannot be read harms only itself: infinity is refused before it is
stored, and a destination, connection or producer-key record corrupted in Redis is skipped
and reported as broken (admin list, status, page, metrics, alerts, CLI) while every other
destination keeps ingesting and delivering; the broken one can be replaced or deleted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from app.admin.producer_keys import ProducerKeys
from app.config.destinations import Config, ConfigError, load_config, parse_config
from app.connections.crypto import TokenCipher, parse_keys
from app.connections.records import ConnectionStoreSync
from app.core.keys import Keys
from app.ops.alert_runner import Evaluator, Webhook
from app.store.registry import destination_sync, publish_sync
from tests.support import (
    ADMIN,
    ROOT,
    Answer,
    Api,
    Sandbox,
    call,
    make_settings,
    profile,
    wait_until,
)

pytestmark = pytest.mark.integration

ADMIN_DESTS = "/v1/admin/destinations"
GARBAGE = b"\xff\xfe{not a record"


def two_connections() -> Config:
    """Destinations good and bad on connection conn, other on conn2 (the sandbox's token)."""

    def dest(dest_id: str, conn: str) -> dict[str, Any]:
        return {
            "id": dest_id,
            "name": f"Destination {dest_id}",
            "connection": conn,
            "audiences": {"aud-1": 1},
            "attributes": {"firstName": "firstName"},
        }

    conn = {"user": "test-user", "access_token": "test-token"}
    return parse_config(
        {
            "connections": [{"id": "conn", **conn}, {"id": "conn2", **conn}],
            "destinations": [dest("good", "conn"), dest("bad", "conn"), dest("other", "conn2")],
        }
    )


@dataclass
class World:
    api: Api
    sandbox: Sandbox
    rclient: redis.Redis
    keys: Keys
    producer_key: str

    def ingest(self, dest: str, pid: int, name: str, *, key: str | None = None) -> Answer:
        auth = {"Authorization": f"Bearer {key or self.producer_key}"}
        url = f"{self.api.url}/v1/destinations/{dest}/profiles"
        return call(url, method="POST", body=profile(str(pid), firstName=name), extra=auth)

    def delivered(self, pid: int, name: str) -> None:
        def landed() -> bool:
            return self.sandbox.prospects().get(pid, {}).get("firstName") == name

        wait_until(landed, timeout_s=30, what=f"prospect {pid} to reach the sandbox")

    def admin(self, path: str, *, method: str = "GET", body: Any = None) -> Answer:
        return call(f"{self.api.url}{path}", method=method, admin=True, body=body)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            env={**os.environ, **self.api.env},
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
async def world(
    prefix: str,
    rclient: redis.Redis,
    aclient: aioredis.Redis,
    sandbox: Sandbox,
    api_factory: Callable[..., Api],
    worker_factory: Callable[..., Any],
) -> World:
    """A real API and worker process on destinations good, bad, other; a producer key for all."""
    keys = Keys(prefix)
    api = api_factory(sandbox)
    publish_sync(rclient, keys, two_connections(), cipher=api.cipher)
    worker_factory(api.env, concurrency=1)
    _, key = await ProducerKeys(aclient, keys).create("all", None)
    return World(api, sandbox, rclient, keys, key)


def send_text(url: str, method: str, text: str) -> tuple[int, Any]:
    """A body sent as written: ``1e999`` and ``Infinity`` exactly as a client may type them."""
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=text.encode(), method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_infinity_is_refused_naming_the_field_and_nothing_is_stored(world: World) -> None:
    before = world.rclient.hget(world.keys.destinations(), "good")
    url = f"{world.api.url}{ADMIN_DESTS}/good"
    cases = [
        ("PATCH", '{"bulk": {"off_s": 1e999}}', "/bulk/off_s"),
        ("PATCH", '{"bulk": {"poll_first_s": Infinity}}', "/bulk/poll_first_s"),
        ("PATCH", '{"quota_share": NaN}', "/quota_share"),
        ("PUT", '{"name": "n", "connection": "conn", "bulk": {"timeout_s": -1e999}}', None),
    ]
    for method, text, where in cases:
        status, doc = send_text(url, method, text)
        assert status == 422, (text, doc)
        found = {e["source"]["pointer"]: e["detail"] for e in doc["errors"]}
        assert "finite" in found[where or "/bulk/timeout_s"], doc
    status, doc = send_text(
        f"{world.api.url}{ADMIN_DESTS}",
        "POST",
        '{"id": "new", "name": "n", "connection": "conn", "bulk": {"poll_max_s": 1e999}}',
    )
    assert status == 422 and "/bulk/poll_max_s" in json.dumps(doc)
    assert world.rclient.hget(world.keys.destinations(), "good") == before
    assert not world.rclient.hexists(world.keys.destinations(), "new")
    # And everything still works.
    assert world.ingest("good", 11, "Ada").status == 202
    world.delivered(11, "Ada")
    assert world.admin(ADMIN_DESTS).status == 200


async def test_a_destination_record_that_cannot_be_read_harms_only_itself(
    world: World, aclient: aioredis.Redis
) -> None:
    dests = world.keys.destinations()
    # A change waits in bad (disabled) when its record is broken: it must not be lost.
    assert world.admin(f"{ADMIN_DESTS}/bad", method="PATCH", body={"enabled": False}).status == 200
    assert world.ingest("bad", 20, "Kept").status == 202
    world.rclient.hset(dests, "bad", GARBAGE)

    # The others ingest and deliver through the real worker; the broken one waits, 503.
    assert world.ingest("good", 21, "Grace").status == 202
    assert world.ingest("other", 22, "Alan").status == 202
    world.delivered(21, "Grace")
    world.delivered(22, "Alan")
    auth = {"Authorization": f"Bearer {world.producer_key}"}

    def seen_broken() -> bool:  # the API's catalog is cached for registry.CACHE_TTL_S
        status = call(f"{world.api.url}/v1/destinations/bad/status", extra=auth)
        return status.status == 200 and "broken" in status.json()

    wait_until(seen_broken, timeout_s=10, what="the API to see bad's record broken")
    refused = world.ingest("bad", 23, "Nobody")
    assert refused.status == 503 and "cannot be read" in refused.body

    listed = world.admin(ADMIN_DESTS)
    assert listed.status == 200
    assert [d["id"] for d in listed.json()["data"]] == ["good", "other"]
    [broken] = listed.json()["meta"]["broken"]
    assert broken["kind"] == "destination" and broken["id"] == "bad"
    assert "JSON" in broken["reason"] or "UTF-8" in broken["reason"], broken
    shown = world.admin(f"{ADMIN_DESTS}/bad")
    assert shown.status == 409 and "unreadable" in shown.body

    status = call(f"{world.api.url}/v1/destinations/bad/status", extra=auth)
    assert status.status == 200 and status.json()["broken"] == broken["reason"]
    good = call(f"{world.api.url}/v1/destinations/good/status", extra=auth)
    assert good.status == 200 and "broken" not in good.json()
    page = world.admin("/status")
    assert page.status == 200 and "BROKEN" in page.body and "Destination good" in page.body
    assert world.admin("/status/bad").status == 200
    metrics = world.admin("/metrics")
    assert metrics.status == 200 and "outreach_sync_dataflow_up 1.0" in metrics.body
    assert 'outreach_sync_record_unreadable{id="bad",kind="destination"} 1.0' in metrics.body

    settings = make_settings(world.api.env)
    notices = await Evaluator(aclient, settings, Webhook(settings, None)).evaluate()
    assert "record_unreadable:destination:bad" in {n.key for n in notices}

    cli_status = world.cli("status")
    assert cli_status.returncode == 0 and "bad  BROKEN" in cli_status.stdout, cli_status.stderr
    cli_list = world.cli("destinations", "list")
    assert cli_list.returncode == 0 and "BROKEN" in cli_list.stdout, cli_list.stderr
    one = world.cli("failures", "list", "-d", "bad")  # a command about it says why, no trace
    assert one.returncode == 1 and "stored record unreadable" in one.stderr, one.stderr
    assert "Traceback" not in one.stderr

    # Replaced with PUT (here as the 1e999 PATCH left it: valid JSON the model refuses): its
    # waiting change is delivered, and it takes new ones.
    stored = json.loads(world.rclient.hget(dests, "good") or b"{}")
    world.rclient.hset(dests, "bad", json.dumps({**stored, "id": "bad", "bulk": {"off_s": None}}))
    body = {"name": "Fixed", "connection": "conn", "attributes": {"firstName": "firstName"}}
    assert world.admin(f"{ADMIN_DESTS}/bad", method="PUT", body=body).status == 200
    world.delivered(20, "Kept")
    assert world.ingest("bad", 24, "Fixed").status == 202
    world.delivered(24, "Fixed")

    # Deleted through the API (force: whatever it still holds goes with it), then the CLI.
    world.rclient.hset(dests, "bad", GARBAGE)
    assert world.admin(f"{ADMIN_DESTS}/bad?force=true", method="DELETE").status == 200
    assert not world.rclient.hexists(dests, "bad")
    world.rclient.hset(dests, "bad", GARBAGE)
    deleted = world.cli("destinations", "delete", "bad")
    assert deleted.returncode == 0, deleted.stderr
    assert not world.rclient.hexists(dests, "bad")
    assert "meta" not in world.admin(ADMIN_DESTS).json()


async def test_a_connection_record_that_cannot_be_read_harms_only_itself(world: World) -> None:
    keys = world.keys
    # Valid JSON that the connection model refuses.
    bad_conn = b'{"id": "conn2", "user": "u", "reserve_share": "lots"}'
    world.rclient.hset(keys.connections(), "conn2", bad_conn)

    assert world.ingest("good", 31, "Edsger").status == 202
    world.delivered(31, "Edsger")
    conns = world.admin("/v1/admin/connections")
    assert conns.status == 200 and [c["id"] for c in conns.json()["data"]] == ["conn"]
    [broken] = conns.json()["meta"]["broken"]
    assert broken["id"] == "conn2" and "reserve_share" in broken["reason"]
    assert world.admin("/v1/admin/connections/conn2").status == 409
    assert world.admin(ADMIN_DESTS).status == 200
    page = world.admin("/status")
    assert page.status == 200 and "Destination other" in page.body
    metrics = world.admin("/metrics")
    assert metrics.status == 200 and "outreach_sync_dataflow_up 1.0" in metrics.body
    assert 'outreach_sync_record_unreadable{id="conn2",kind="connection"} 1.0' in metrics.body
    listed = world.cli("connections", "list")
    assert listed.returncode == 0 and "conn2: BROKEN" in listed.stdout, listed.stderr

    gone = world.admin("/v1/admin/connections/conn2?force=true", method="DELETE")
    assert gone.status == 204
    assert "meta" not in world.admin("/v1/admin/connections").json()


async def test_a_producer_key_record_that_cannot_be_read_harms_only_itself(world: World) -> None:
    keys = world.keys
    world.rclient.hset(keys.producer_keys(), "0123456789ab", GARBAGE)

    assert world.ingest("good", 41, "Barbara").status == 202
    world.delivered(41, "Barbara")
    # The key whose record cannot be read is refused (401), never a 500.
    forged = "osk_0123456789ab_" + "a" * 43
    assert world.ingest("good", 42, "Nobody", key=forged).status == 401
    key_list = world.cli("keys", "list")
    assert key_list.returncode == 0, key_list.stderr
    assert "0123456789ab  BROKEN" in key_list.stdout and "all" in key_list.stdout
    assert world.cli("keys", "delete", "0123456789ab").returncode == 0
    assert not world.rclient.hexists(keys.producer_keys(), "0123456789ab")


def test_config_load_replaces_broken_records_and_reasons_never_quote_them(
    prefix: str, rclient: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys(prefix)
    cipher = TokenCipher(parse_keys(Fernet.generate_key().decode()))
    secret = "plaintext-token-from-an-old-version"
    odd = f"c{prefix}"  # a connection id no other test has warned about in this process
    bad_conn = {"id": odd, "user": "u", "access_token": secret, "reserve_share": "lots"}
    rclient.hset(keys.connections(), odd, json.dumps(bad_conn))
    rclient.hset(keys.connections(), "conn", GARBAGE)
    rclient.hset(keys.destinations(), "good", GARBAGE)
    store = ConnectionStoreSync(rclient, keys, cipher)
    with caplog.at_level(logging.WARNING, logger="app.config.broken"):
        [broken, garbage] = sorted(store.broken(), key=lambda b: b.id, reverse=True)
        store.broken()  # read again: no second warning
    assert (broken.id, garbage.id) == (odd, "conn")
    assert "reserve_share" in broken.reason and secret not in broken.reason
    warned = [r.getMessage() for r in caplog.records if odd in r.getMessage()]
    assert len(warned) == 1 and secret not in warned[0]

    # config load re-declaring them replaces the broken records.
    publish_sync(rclient, keys, two_connections(), cipher=cipher)
    assert [r.id for r in store.all()] == ["conn", "conn2"]
    assert [b.id for b in store.broken()] == [odd]
    assert destination_sync(rclient, keys, "good") is not None


def test_a_configuration_file_with_infinity_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "destinations.json"
    path.write_text(
        '{"connections": [{"id": "c", "reserve_share": 1e999}], "destinations": [{"id": "d", '
        '"name": "D", "connection": "c", "quota_share": NaN, "bulk": {"off_s": Infinity}}]}'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    finite = "must be a finite number (not infinity or NaN)"
    assert caught.value.problems == [
        f"connections[0].reserve_share: {finite}",
        f"destinations[0].bulk.off_s: {finite}",
        f"destinations[0].quota_share: {finite}",
    ]
    toml = tmp_path / "destinations.toml"
    toml.write_text('[[connections]]\nid = "c"\nreserve_share = inf\n')
    with pytest.raises(ConfigError, match=r"connections\[0\].reserve_share: must be a finite"):
        load_config(toml)
