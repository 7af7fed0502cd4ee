"""The destinations admin API and CLI: validation naming each field, CRUD, deletion with a
backlog, the admin key, and a change reaching a running worker without a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from app.api.app import make_app
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import CACHE_TTL_S, publish_sync
from tests.support import (
    ROOT,
    Sandbox,
    e2e_config,
    free_port,
    make_settings,
    profile,
    raw_status,
    settings_env,
    wait_for_holds,
    wait_until,
)

ADMIN_KEY = "admin-api-test-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def new_destination(dest_id: str = "crm", **extra: Any) -> dict[str, Any]:
    return {
        "id": dest_id,
        "name": "CRM audiences",
        "connection": "conn",
        "audiences": {"aud-1": 1, "aud-2": 2},
        "attributes": {"firstName": "firstName"},
        **extra,
    }


class Client:
    """The admin API over real HTTP."""

    def __init__(self, base: str, *, envelope: bool = True) -> None:
        self.base = base
        self.envelope = envelope

    async def call(
        self,
        method: str,
        path: str = "",
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
        hdrs = AUTH if headers is None else headers
        if data is not None and "Content-Type" not in hdrs:
            hdrs = {**hdrs, "Content-Type": "application/json"}  # as the docs' curl sends
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, f"{self.base}{path}", data=data, headers=hdrs) as r,
        ):
            doc = await r.json()
        if (
            self.envelope and 200 <= r.status < 300
        ):  # admin successes carry their document under "data"
            assert set(doc) == {"data"}, doc
            return r.status, doc["data"]
        return r.status, doc


async def start_api(env: dict[str, str]) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_app(make_settings(env)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def admin(prefix: str, rclient: redis.Redis) -> AsyncIterator[Client]:
    publish_sync(rclient, Keys(prefix), e2e_config())
    runner, url = await start_api(settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY))
    yield Client(f"{url}/v1/admin/destinations")
    await runner.cleanup()


def pointers(doc: dict[str, Any]) -> dict[str, str]:
    return {e["source"]["pointer"]: e["detail"] for e in doc["errors"]}


async def test_validation_errors_name_each_field(admin: Client) -> None:
    body = new_destination(
        audiences={"zero": 0, "too-high": 151, "first": 5, "again": 5, "text": "7"},
        attributes={"fullName": "name", "nick": "nickname"},
        status_values={"realized": "x" * 32_001, "gone": "y"},
        identity_namespace="",
        enabled="yes",
    )
    status, doc = await admin.call("POST", "", body)
    assert status == 422
    found = pointers(doc)
    assert "outside 1–150" in found["/audiences/zero"]  # noqa: RUF001
    assert "mapping ID 151" in found["/audiences/too-high"]
    assert "mapping ID 5 is already used by audience first" in found["/audiences/again"]
    assert "integer" in found["/audiences/text"]
    assert "'name' is not a writable Outreach prospect attribute" in found["/attributes/fullName"]
    assert "32000" in found["/status_values/realized"]
    assert "/status_values/gone" in found
    assert "OutreachId" in found["/identity_namespace"]
    assert "true or false" in found["/enabled"]
    assert "/attributes/nick" not in found and "/audiences/first" not in found
    assert all(e["status"] == "422" and e["title"] == "Invalid destination" for e in doc["errors"])

    status, doc = await admin.call("POST", "", new_destination(connection="nowhere"))
    assert status == 422 and "no connection 'nowhere'" in pointers(doc)["/connection"]
    status, doc = await admin.call("POST", "", new_destination(attributes={"a": "custom1"}))
    assert status == 422 and "custom1 is already written by audience aud-1" in json.dumps(doc)
    body = new_destination()
    del body["id"]
    status, doc = await admin.call("POST", "", body)
    assert status == 422 and pointers(doc)["/id"] == "id: is required"
    status, doc = await admin.call("POST", "", b"{broken")
    assert status == 400 and "line 1" in doc["errors"][0]["detail"]
    status, doc = await admin.call("POST", "", [new_destination()])
    assert status == 422 and "JSON object" in doc["errors"][0]["detail"]
    assert (await admin.call("GET", "/crm"))[0] == 404  # nothing invalid was stored


async def test_create_read_replace_patch_delete(
    admin: Client, rclient: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    status, created = await admin.call("POST", "", new_destination())
    assert status == 201 and created["enabled"] is True
    assert created["identity_namespace"] == "OutreachId"
    assert created["status_values"] == {
        "realized": "realized",
        "existing": "existing",
        "exited": "exited",
    }
    assert (await admin.call("POST", "", new_destination()))[0] == 409
    status, listed = await admin.call("GET")
    assert status == 200 and [d["id"] for d in listed] == ["crm", "e2e"]

    replaced = new_destination(name="Renamed", audiences={"aud-9": 9})
    del replaced["id"]  # the path names it
    status, doc = await admin.call("PUT", "/crm", replaced)
    assert status == 200 and doc["name"] == "Renamed" and doc["audiences"] == {"aud-9": 9}
    status, doc = await admin.call("PUT", "/crm", {**replaced, "id": "other"})
    assert status == 422 and "ids never change" in pointers(doc)["/id"]
    assert (await admin.call("PUT", "/missing", replaced))[0] == 404

    rclient.sadd(keys.invalid_mappings("crm"), 9)  # as a worker marks a refused field
    status, doc = await admin.call(
        "PATCH", "/crm", {"enabled": False, "audiences": {"aud-3": 3}, "description": "d"}
    )
    assert status == 200
    assert (doc["enabled"], doc["audiences"], doc["name"]) == (
        False,
        {"aud-9": 9, "aud-3": 3},
        "Renamed",
    )
    assert rclient.exists(keys.invalid_mappings("crm")) == 0  # tried again after a change
    status, doc = await admin.call("PATCH", "/crm", {"audiences": {"aud-9": None}, "enabled": True})
    assert status == 200 and doc["audiences"] == {"aud-3": 3} and doc["enabled"] is True
    status, doc = await admin.call("PATCH", "/crm", {"audiences": {"aud-4": 3}})
    assert status == 422 and "mapping ID 3 is already used" in json.dumps(doc)
    status, doc = await admin.call("GET", "/crm")
    assert status == 200 and doc["audiences"] == {"aud-3": 3}
    stored = json.loads(rclient.hget(keys.destinations(), "crm") or b"{}")
    assert stored == doc  # what workers read is what the API shows

    status, doc = await admin.call("DELETE", "/crm")
    assert status == 200 and doc == {
        "id": "crm",
        "discarded": {"pending": 0, "in_flight": 0, "failures": 0},
    }
    assert (await admin.call("GET", "/crm"))[0] == 404
    assert (await admin.call("DELETE", "/crm"))[0] == 404


async def test_delete_with_a_backlog_is_refused_unless_forced(
    admin: Client, rclient: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    settings = make_settings(settings_env(prefix, None))
    producer = Producer(settings)
    producer.send("e2e", [profile("7"), profile("8")])
    producer.close()
    status, doc = await admin.call("DELETE", "/e2e")
    assert status == 409
    assert "2 prospect(s) with pending changes" in doc["errors"][0]["detail"]
    assert "force=true" in doc["errors"][0]["detail"]
    assert rclient.zcard(keys.due("e2e")) == 2  # nothing was touched
    assert (await admin.call("DELETE", "/e2e?force=maybe"))[0] == 400
    status, doc = await admin.call("DELETE", "/e2e?force=true")
    assert status == 200 and doc["discarded"] == {"pending": 2, "in_flight": 0, "failures": 0}
    # Only the retired marker stays: merge.lua refuses changes sent before the deletion.
    left = list(rclient.scan_iter(match=f"{prefix}:{{e2e}}:*"))
    assert left == [Keys(prefix).retired("e2e").encode()]


async def test_admin_routes_refuse_without_the_admin_key(admin: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": ADMIN_KEY}):
        status, doc = await admin.call("GET", "", headers=headers)
        assert status == 401 and doc["errors"][0]["title"] == "Admin authentication required"
        status, _ = await admin.call("POST", "", new_destination(), headers=headers)
        assert status == 401
    basic = aiohttp.encode_basic_auth("ops", ADMIN_KEY)
    assert (await admin.call("GET", "", headers={"Authorization": basic}))[0] == 200
    assert (await admin.call("GET", "/missing", headers={}))[0] == 401  # no existence leak


def test_cli_manages_destinations(prefix: str, rclient: redis.Redis) -> None:
    publish_sync(rclient, Keys(prefix), e2e_config())
    env = {**os.environ, **settings_env(prefix, None)}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "app", "destinations", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, env=env)

    bad = cli("create", "-", stdin=json.dumps(new_destination(audiences={"a": 151})))
    assert bad.returncode == 2 and "/audiences/a: mapping ID 151 is outside" in bad.stderr
    made = cli("create", "-", stdin=json.dumps(new_destination()))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["id"] == "crm"
    assert cli("disable", "crm").stdout.strip() == "destination crm disabled"
    merged = cli("update", "crm", "-", "--merge", stdin='{"audiences": {"aud-2": 12}}')
    assert merged.returncode == 0 and json.loads(merged.stdout)["audiences"]["aud-2"] == 12
    listed = cli("list").stdout.splitlines()
    assert listed[0].split() == ["ID", "ENABLED", "CONNECTION", "AUDIENCES", "ATTRIBUTES", "NAME"]
    assert listed[1].split()[:4] == ["crm", "no", "conn", "2"]
    shown = json.loads(cli("show", "crm").stdout)
    assert shown["enabled"] is False and shown["audiences"] == {"aud-1": 1, "aud-2": 12}
    Producer(make_settings(settings_env(prefix, None))).send(
        "crm", [profile("5", audience="aud-1")]
    )
    refused = cli("delete", "crm")
    assert refused.returncode == 1 and "1 prospect(s) with pending changes" in refused.stderr
    forced = cli("delete", "crm", "--force")
    assert forced.returncode == 0 and "discarded 1 pending prospect(s)" in forced.stdout
    assert cli("show", "crm").returncode == 2


@pytest.mark.integration
async def test_an_edit_reaches_a_running_worker_without_a_restart(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
) -> None:
    env = settings_env(
        prefix, sandbox, ADMIN_API_KEY=ADMIN_KEY, COALESCE_WINDOW_MS="100", REAUTH_HOLD_S="0.2"
    )
    publish_sync(rclient, Keys(prefix), e2e_config())
    worker_factory(env, concurrency=1)
    runner, url = await start_api(env)
    admin = Client(f"{url}/v1/admin/destinations")

    async def ingest(pid: str, status: str) -> None:
        code, doc = await Client(f"{url}/v1/destinations", envelope=False).call(
            "POST", "/e2e/profiles", profile(pid, status=status, audience="aud-1")
        )
        assert code == 202 and doc["accepted"] == 1, doc

    def sent(pid: int) -> dict[str, Any]:
        return sandbox.prospects().get(pid, {})

    try:
        await ingest("501", "realized")
        wait_until(lambda: sent(501).get("custom1") == "realized", timeout_s=30, what="custom1")

        # The audience moves to mapping ID 9: the next change is written to custom9.
        assert (await admin.call("PATCH", "/e2e", {"audiences": {"aud-1": 9}}))[0] == 200
        await ingest("501", "exited")
        wait_until(lambda: sent(501).get("custom9") == "exited", timeout_s=30, what="custom9")
        assert sent(501).get("custom1") == "realized"  # the old field is left alone
        last = [p for p in sandbox.patches() if p["prospect_id"] == 501][-1]
        assert last["attributes"] == ["custom9"]

        # Disabled: accepted changes wait (the worker's copy expires within CACHE_TTL_S) ...
        assert (await admin.call("PATCH", "/e2e", {"enabled": False}))[0] == 200
        time.sleep(CACHE_TTL_S + 0.5)
        patches = len(sandbox.patches())
        await ingest("502", "realized")
        # The drain looked at the destination again, and each time held it.
        wait_for_holds(rclient, Keys(prefix), "e2e", looks=2, span_s=0.4)
        assert len(sandbox.patches()) == patches and 502 not in sandbox.prospects()
        assert rclient.zcard(Keys(prefix).due("e2e")) == 1
        # ... and are sent once it is enabled again.
        assert (await admin.call("PATCH", "/e2e", {"enabled": True}))[0] == 200
        wait_until(lambda: sent(502).get("custom9") == "realized", timeout_s=30, what="enabled")
    finally:
        await runner.cleanup()


async def test_an_admin_key_that_is_not_utf8_is_refused_with_401_not_500(admin: Client) -> None:
    for header in (b"Authorization: Bearer \xff\xfeadmin", b"Authorization: Basic b3BzOv8="):
        assert await raw_status(admin.base, "GET", header) == 401


async def test_admin_writes_need_a_json_content_type(admin: Client) -> None:
    """A cross-site form (text/plain, form encodings) cannot reach the admin writes."""
    body = json.dumps(new_destination("forged")).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        headers = {**AUTH, "Content-Type": ctype}
        for method, path in (("POST", ""), ("PUT", "/e2e"), ("PATCH", "/e2e")):
            status, doc = await admin.call(method, path, body, headers=headers)
            assert status == 415, (method, ctype, doc)
            assert doc["errors"][0]["title"] == "Unsupported media type"
    assert (await admin.call("GET", "/forged"))[0] == 404  # nothing was created
    merge = {**AUTH, "Content-Type": "application/merge-patch+json"}
    status, doc = await admin.call("PATCH", "/e2e", {"enabled": False}, headers=merge)
    assert status == 200 and doc["enabled"] is False
