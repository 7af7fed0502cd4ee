"""Token refresh against the sandbox's token endpoint: one refresh for many concurrent
processes, rotation persisted, 429s waited out, and a revoked grant pausing its destinations
(nothing lost, nothing dead-lettered) until a new OAuth dance delivers everything."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from app.config.destinations import Connection, parse_config
from app.connections.crypto import TokenCipher, parse_keys
from app.connections.oauth import RefreshOutcome, TokenManager, retry_after_s
from app.connections.records import ConnectionStore, ConnectionStoreSync
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.support import (
    CLIENT,
    TEST_REDIS_URL,
    Api,
    Sandbox,
    call,
    idle,
    make_settings,
    settings_env,
    wait_for_holds,
    wait_until,
)

pytestmark = pytest.mark.integration

USER = "sandbox-user"
WORKERS = 8


def register(sandbox: Sandbox, access: str, refresh: str, expires_in: int) -> None:
    body = {"access_token": access, "user": USER, "expires_in": expires_in}
    sandbox.post("/_sandbox/tokens", {**body, "refresh_token": refresh})


def env_for(prefix: str, sandbox: Sandbox, key: str, **extra: str) -> dict[str, str]:
    return settings_env(
        prefix, sandbox, TOKEN_ENCRYPTION_KEY=key, REAUTH_HOLD_S="1", **CLIENT, **extra
    )


def install(
    rclient: redis.Redis, prefix: str, cipher: TokenCipher, access: str, refresh: str, **kw: Any
) -> None:
    ConnectionStoreSync(rclient, Keys(prefix), cipher).install(
        Connection(id="c", user=USER),
        access_token=access,
        refresh_token=refresh,
        expires_at=kw.get("expires_at"),
        source="cli",
    )


def connected(
    rclient: redis.Redis, prefix: str, sandbox: Sandbox, *, expires_in: int = 3600, **kw: Any
) -> tuple[str, TokenCipher]:
    """Connection "c" installed with tokens a0/r0 that the sandbox knows (valid
    ``expires_in`` there); returns the encryption key and its cipher. ``kw``: see install."""
    key = Fernet.generate_key().decode()
    cipher = TokenCipher(parse_keys(key))
    register(sandbox, "a0", "r0", expires_in)
    install(rclient, prefix, cipher, "a0", "r0", **kw)
    return key, cipher


def token_grant(sandbox: Sandbox, refresh_token: str) -> int:
    """Status of a refresh_token grant at the sandbox (200 issues, 400 refuses)."""
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": "sandbox-client",
        "client_secret": "sandbox-secret",
    }
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(f"{sandbox.url}/oauth/token", data=data, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def refresh_calls(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["token_calls"]["refresh_token"])


async def manager(env: dict[str, str]) -> tuple[TokenManager, Callable[[], Any]]:
    settings = make_settings(env)
    client = aioredis.from_url(TEST_REDIS_URL)
    session = aiohttp.ClientSession()
    assert settings.token_encryption_key is not None
    cipher = TokenCipher(parse_keys(settings.token_encryption_key.get_secret_value()))
    mgr = TokenManager.from_settings(
        ConnectionStore(client, settings.keys, cipher), session, settings
    )

    async def close() -> None:
        await session.close()
        await client.aclose()

    return mgr, close


def _one_process(env: dict[str, str], barrier: Any, out: Any) -> None:
    async def run() -> tuple[int, str]:
        mgr, close = await manager(env)
        try:
            barrier.wait(timeout=30)
            access = await mgr.current("c")
            assert access is not None and access.token is not None
            return access.generation, hashlib.sha256(access.token.encode()).hexdigest()
        finally:
            await close()

    out.put(asyncio.run(run()))


def test_eight_processes_with_an_expiring_token_cause_exactly_one_refresh(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    # Within the refresh margin: every process wants to refresh before using it.
    key, _ = connected(rclient, prefix, sandbox, expires_at=time.time() + 10)
    env = env_for(prefix, sandbox, key)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_one_process, args=(env, barrier, out)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    assert refresh_calls(sandbox) == 1
    assert len(set(results)) == 1 and results[0][0] == 2  # all use the one new token
    assert token_grant(sandbox, "r0") == 400  # rotated away


def test_eight_concurrent_workers_hitting_an_expired_token_refresh_once_and_deliver(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, worker_factory: Callable[..., Any]
) -> None:
    # The expiry is unknown to us: the workers learn it from Outreach's 401s.
    key, cipher = connected(rclient, prefix, sandbox, expires_in=1)
    dests = [f"d{i}" for i in range(WORKERS)]
    conf = {
        "connections": [{"id": "c", "user": USER}],
        "destinations": [
            {"id": d, "name": d, "connection": "c", "audiences": {"a": 1}} for d in dests
        ],
    }
    keys = Keys(prefix)
    publish_sync(rclient, keys, parse_config(conf), cipher=cipher)
    time.sleep(1.1)  # the access token has expired at the sandbox
    env = env_for(prefix, sandbox, key, COALESCE_WINDOW_MS="0")
    for w in range(2):
        worker_factory(env, concurrency=WORKERS // 2, name=f"w{w}")
    producer = Producer(make_settings(env))
    for i, d in enumerate(dests):
        profiles = [
            {
                "identityMap": {"OutreachId": [{"id": str(100 * i + p)}]},
                "segmentMembership": {"ups": {"a": {"status": "realized"}}},
            }
            for p in range(1, 4)
        ]
        producer.send(d, profiles)
    producer.close()
    expected = {100 * i + p: {"custom1": "realized"} for i in range(WORKERS) for p in range(1, 4)}
    wait_until(
        lambda: sandbox.prospects() == expected and all(idle(rclient, keys, d) for d in dests),
        timeout_s=60,
        what="every prospect delivered",
        every_s=0.2,
    )
    assert refresh_calls(sandbox) == 1
    assert sandbox.stats()["by_status"].get("401", 0) >= 1
    assert not any(rclient.hlen(keys.failures(d)) for d in dests)


async def test_the_rotated_refresh_token_is_persisted_and_429s_are_waited_out(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    key, cipher = connected(rclient, prefix, sandbox)
    sandbox.post("/_sandbox/config", {"token_429_next": 2})
    mgr, close = await manager(env_for(prefix, sandbox, key))
    try:
        assert await mgr.after_unauthorized("c", 1) is RefreshOutcome.REFRESHED
        assert refresh_calls(sandbox) == 3  # two 429s, then the grant
        store = ConnectionStoreSync(rclient, Keys(prefix), cipher)
        rec = store.get("c")
        assert rec is not None and rec.generation == 2
        stored = rec.connection(cipher).refresh_token
        assert stored is not None and stored.get_secret_value() != "r0"
        assert token_grant(sandbox, "r0") == 400  # the old one is dead at Outreach
        # A 401 seen with the old generation reuses the refresh that already happened.
        assert await mgr.after_unauthorized("c", 1) is RefreshOutcome.REFRESHED
        assert refresh_calls(sandbox) == 4  # (the r0 probe above)
        # The stored (rotated) refresh token is the live one: the next refresh uses it.
        assert await mgr.after_unauthorized("c", 2) is RefreshOutcome.REFRESHED
        assert refresh_calls(sandbox) == 5
        again = store.get("c")
        assert again is not None and again.generation == 3
    finally:
        await close()


async def test_a_revoked_grant_makes_the_connection_reauth_required_logged_once(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    key, cipher = connected(rclient, prefix, sandbox)
    sandbox.post("/_sandbox/tokens/revoke", {"user": USER})
    one, close_one = await manager(env_for(prefix, sandbox, key))
    two, close_two = await manager(env_for(prefix, sandbox, key))
    try:
        with caplog.at_level(logging.ERROR, logger="app.connections.oauth"):
            outcomes = await asyncio.gather(
                *(m.after_unauthorized("c", 1) for m in (one, two, one, two))
            )
        assert set(outcomes) == {RefreshOutcome.REAUTH_REQUIRED}
        assert refresh_calls(sandbox) == 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "needs re-authorization" in errors[0].getMessage()
        rec = ConnectionStoreSync(rclient, Keys(prefix), cipher).get("c")
        assert rec is not None and rec.state == "reauth_required"
        assert rec.reason is not None and "invalid_grant" in rec.reason
        paused = await one.current("c")
        assert paused is not None and paused.token is None and paused.blocked == "reauth_required"
    finally:
        await close_one()
        await close_two()


async def test_after_a_failed_refresh_the_waiters_do_not_call_the_token_endpoint_again(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    key, _ = connected(rclient, prefix, sandbox)
    # The token endpoint keeps answering 429 for longer than a refresh may wait.
    sandbox.post("/_sandbox/config", {"token_429_next": 100})
    env = env_for(prefix, sandbox, key, TOKEN_REFRESH_WAIT_S="0.1")  # one try: no 2nd
    one, close_one = await manager(env)
    two, close_two = await manager(env)
    try:
        outcomes = await asyncio.gather(*(m.after_unauthorized("c", 1) for m in (one, two)))
        assert set(outcomes) == {RefreshOutcome.UNAVAILABLE}
        assert refresh_calls(sandbox) == 1  # the waiter saw the failure, did not try again
        assert await one.after_unauthorized("c", 1) is RefreshOutcome.UNAVAILABLE
        assert refresh_calls(sandbox) == 1
        # Kept only a moment: the lock outlives a refresh (wait + OUTREACH_TIMEOUT_S).
        assert one._lock_ms >= (0.1 + 30) * 1000
        assert 0 < rclient.pttl(f"{Keys(prefix).refresh_lock('c')}:failed") <= 5000
    finally:
        await close_one()
        await close_two()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (retry_after_s(future) or 0) <= 31


def profile(pid: int, status: str, first_name: str) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": str(pid)}]},
        "segmentMembership": {"ups": {"a": {"status": status}}},
        "attributes": {"firstName": {"value": first_name}},
    }


def test_revoked_token_pauses_without_loss_and_a_new_dance_delivers_everything(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(sandbox)
    keys = Keys(prefix)
    conf = {
        "connections": [{"id": "c", "user": USER}],
        "destinations": [
            {
                "id": "d",
                "name": "d",
                "connection": "c",
                "audiences": {"a": 1},
                "attributes": {"firstName": "firstName"},
            }
        ],
    }
    publish_sync(rclient, keys, parse_config(conf), cipher=api.cipher)
    # Shorter than the pause below: time spent paused must not count against the retry age.
    env = {**api.env, "COALESCE_WINDOW_MS": "0", "MAX_RETRY_AGE_S": "1.5", "REAUTH_HOLD_S": "0.2"}
    worker_factory(env, concurrency=2)
    producer = Producer(make_settings(env))
    # Not authorized yet: changes wait, nothing is sent.
    producer.send("d", [profile(p, "realized", "v1") for p in range(1, 6)])
    wait_for_holds(rclient, keys, "d", looks=2, span_s=0.4)  # the drain looked, and waited
    assert sandbox.prospects() == {} and sandbox.stats()["requests"] == 0

    assert api.dance("c").status == 200
    v1 = {p: {"custom1": "realized", "firstName": "v1"} for p in range(1, 6)}
    wait_until(lambda: sandbox.prospects() == v1, timeout_s=30, what="the first changes")

    sandbox.post("/_sandbox/tokens/revoke", {"user": USER})
    producer.send("d", [profile(p, "exited", "v2") for p in range(1, 6)])
    store = ConnectionStoreSync(rclient, keys, api.cipher)

    def paused() -> bool:
        rec = store.get("c")
        return rec is not None and rec.state == "reauth_required"

    wait_until(paused, timeout_s=30, what="the connection to need re-authorization")
    # While paused, changes keep coalescing: newer values replace v2.
    producer.send("d", [profile(p, "exited", "v3") for p in range(1, 4)])
    # Held again and again for longer than MAX_RETRY_AGE_S: still nothing sent, nothing
    # failed, no attempt.
    wait_for_holds(rclient, keys, "d", looks=3, span_s=1.6)
    assert sandbox.prospects() == v1
    assert rclient.hlen(keys.failures("d")) == 0 and rclient.hlen(keys.attempts("d")) == 0
    assert rclient.zcard(keys.due("d")) == 5
    assert refresh_calls(sandbox) == 1
    shown = call(f"{api.url}/v1/admin/connections/c", admin=True).json()["data"]
    assert shown["state"] == "reauth_required" and "invalid_grant" in shown["reason"]

    # Outreach has a bad moment just as the user reconnects: the paused changes are older
    # than MAX_RETRY_AGE_S, yet a 5xx now is retried, not turned into a dead letter.
    sandbox.post("/_sandbox/config", {"fault_5xx_rate": 1.0})
    assert api.dance("c").status == 200
    wait_until(
        lambda: any(s.startswith("5") for s in sandbox.stats()["by_status"]),
        timeout_s=30,
        what="a 5xx after reconnecting",
    )
    sandbox.post("/_sandbox/config", {"fault_5xx_rate": 0.0})
    final = {p: {"custom1": "exited", "firstName": "v3" if p <= 3 else "v2"} for p in range(1, 6)}
    wait_until(
        lambda: sandbox.prospects() == final and idle(rclient, keys, "d"),
        timeout_s=30,
        what="everything pending after reconnecting",
    )
    assert rclient.hlen(keys.failures("d")) == 0
    producer.close()
