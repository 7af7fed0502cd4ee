"""Producers need an API key: scoped to destinations, stored hashed, revocable, rate-bounded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from app.admin.producer_keys import ProducerKeys
from app.api.app import make_app
from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import (
    ROOT,
    TEST_REDIS_URL,
    e2e_config,
    free_port,
    make_settings,
    profile,
    raw_status,
    settings_env,
)

ADMIN_KEY = "producer-auth-admin-key"
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(prefix: str, rclient: redis.Redis) -> AsyncIterator[Serve]:
    """Start the real API (destinations e2e and other published) with extra settings."""
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config("e2e"))
    publish_sync(rclient, keys, e2e_config("other"))
    runners: list[web.AppRunner] = []

    async def start(**extra: str) -> str:
        env = settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY, **extra)
        runner = web.AppRunner(make_app(make_settings(env)))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/v1/destinations"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def producer_keys(prefix: str) -> AsyncIterator[ProducerKeys]:
    client = aioredis.from_url(TEST_REDIS_URL)
    yield ProducerKeys(client, Keys(prefix))
    await client.aclose()


async def send(
    url: str, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any, Any]:
    data = json.dumps(body if body is not None else profile("42")).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=hdrs) as r:
        return r.status, await r.json(), r.headers


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_ingestion_without_a_valid_key_is_refused_with_401(
    serve: Serve, producer_keys: ProducerKeys
) -> None:
    api = await serve()
    url = f"{api}/e2e/profiles"
    status, doc, headers = await send(url)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="outreach-sync"'
    assert doc["errors"][0]["status"] == "401" and "X-API-Key" in doc["errors"][0]["detail"]

    _, real = await producer_keys.create("feeder", ["e2e"])
    unknown = real[:17] + ("A" if real[17] != "A" else "B") + real[18:]  # same id, wrong secret
    other_id = "osk_000000000000_" + real.split("_", 2)[2]  # right secret, unknown id
    for bad in (unknown, other_id, "not-a-key", "osk_short"):
        status, doc, headers = await send(url, bearer(bad))
        assert status == 401, bad
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert (
            "unknown API key" in doc["errors"][0]["detail"] or "osk_" in doc["errors"][0]["detail"]
        )
        assert real.split("_", 2)[2] not in json.dumps(doc)  # a secret is never echoed


async def test_scope_revocation_and_the_admin_key(
    serve: Serve, producer_keys: ProducerKeys, rclient: redis.Redis, prefix: str
) -> None:
    api = await serve()
    key, text = await producer_keys.create("feeder", ["e2e"])
    everywhere_key, everywhere = await producer_keys.create("all", None)

    status, doc, _ = await send(f"{api}/e2e/profiles", bearer(text))
    assert status == 202 and doc["accepted"] == 1
    status, doc, _ = await send(f"{api}/e2e/profiles", {"X-API-Key": text})
    assert status == 202

    status, doc, _ = await send(f"{api}/other/profiles", bearer(text))
    assert status == 403
    assert doc["errors"][0]["title"] == "Destination not allowed"
    assert key.key_id in doc["errors"][0]["detail"] and "'other'" in doc["errors"][0]["detail"]
    assert rclient.zcard(Keys(prefix).due("other")) == 0  # nothing of it was recorded
    # Out of scope and unknown look alike: a scoped key learns nothing about other ids.
    status, _, _ = await send(f"{api}/nope/profiles", bearer(text))
    assert status == 403

    for dest in ("e2e", "other"):
        status, _, _ = await send(f"{api}/{dest}/profiles", bearer(everywhere))
        assert status == 202
    status, _, _ = await send(f"{api}/nope/profiles", bearer(everywhere))
    assert status == 404
    status, _, _ = await send(f"{api}/other/profiles", bearer(ADMIN_KEY))
    assert status == 202

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{api}/e2e/status") as r:
            assert r.status == 401
        async with s.get(f"{api}/e2e/status", headers=bearer(text)) as r:
            assert r.status == 200 and (await r.json())["destination"] == "e2e"
        async with s.get(f"{api}/other/status", headers=bearer(text)) as r:
            assert r.status == 403

    revoked = await producer_keys.revoke(key.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    status, doc, headers = await send(f"{api}/e2e/profiles", bearer(text))
    assert status == 401 and "revoked" in doc["errors"][0]["detail"]
    assert "WWW-Authenticate" in headers
    status, _, _ = await send(f"{api}/e2e/profiles", bearer(everywhere))
    assert status == 202 and everywhere_key.revoked_at is None


async def test_request_rate_per_key_is_bounded_with_429_and_retry_after(
    serve: Serve, producer_keys: ProducerKeys
) -> None:
    api = await serve(PRODUCER_RATE_LIMIT="3/minute")
    _, first = await producer_keys.create("busy", ["e2e"])
    _, second = await producer_keys.create("calm", ["e2e"])
    statuses = [(await send(f"{api}/e2e/profiles", bearer(first)))[0] for _ in range(3)]
    assert statuses == [202, 202, 202]
    status, doc, headers = await send(f"{api}/e2e/profiles", bearer(first))
    assert status == 429 and doc["errors"][0]["status"] == "429"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert "3 per 1 minute" in doc["errors"][0]["detail"]
    # The bound is per key: another producer is not held back by the busy one.
    assert (await send(f"{api}/e2e/profiles", bearer(second)))[0] == 202
    # Shared through Redis: a second API process counts the same window.
    other_api = await serve(PRODUCER_RATE_LIMIT="3/minute")
    assert (await send(f"{other_api}/e2e/profiles", bearer(first)))[0] == 429


async def test_keys_are_stored_only_as_digests(
    producer_keys: ProducerKeys, rclient: redis.Redis, prefix: str
) -> None:
    key, text = await producer_keys.create("feeder", ["e2e", "other"])
    secret = text.split("_", 2)[2]
    assert text.startswith(f"osk_{key.key_id}_") and len(secret) >= 43
    dump = b"".join(
        k + b"".join(f + v for f, v in rclient.hgetall(k).items())
        for k in rclient.scan_iter(match=f"{prefix}*")
        if rclient.type(k) == b"hash"
    )
    assert secret.encode() not in dump and text.encode() not in dump
    record = json.loads(rclient.hget(Keys(prefix).producer_keys(), key.key_id) or b"{}")
    assert record["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert record["destinations"] == ["e2e", "other"]
    assert (await producer_keys.verify(text)).key_id == key.key_id


def test_cli_creates_lists_and_revokes_keys(prefix: str, rclient: redis.Redis) -> None:
    publish_sync(rclient, Keys(prefix), e2e_config("e2e"))
    env = {**_environ(), **settings_env(prefix, None)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "app", "keys", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)

    bad = cli("create", "--name", "x", "--destination", "e2e", "--destination", "nope")
    assert bad.returncode == 2 and "no destination 'nope'" in bad.stderr
    made = cli("create", "--name", "crm feed", "--destination", "e2e")
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip()
    key_id = text.split("_")[1]
    assert "shown this once" in made.stderr
    listed = cli("list")
    assert key_id in listed.stdout and "crm feed" in listed.stdout and "e2e" in listed.stdout
    assert text.split("_", 2)[2] not in listed.stdout + listed.stderr
    revoked = cli("revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert json.loads(cli("list", "--json").stdout)[0]["revoked_at"] is not None
    assert cli("revoke", "ffffffffffff").returncode == 2


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


async def test_a_key_that_is_not_utf8_is_refused_with_401_not_500(serve: Serve) -> None:
    api = await serve()
    body = json.dumps(profile("42")).encode()
    for header in (b"Authorization: Bearer \xff\xfeosk", b"X-API-Key: caf\xe9-key"):
        assert await raw_status(f"{api}/e2e/profiles", "POST", header, body) == 401
