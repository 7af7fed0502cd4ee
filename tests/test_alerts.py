"""Alerts: the rules, once per incident across evaluators, recovery, the webhook over HTTP,
and the lease that keeps one evaluator running — on real Redis with a local webhook server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from app.config.destinations import parse_config
from app.core.keys import Keys
from app.core.settings import Settings
from app.ops.alert_runner import AlertLoop, Evaluator, Lease, Webhook
from app.ops.alerts import LastHour, Snapshot, conditions, snapshot_from_status
from app.ops.status_doc import DestinationStatus
from app.store.prospects import ProspectStore
from app.store.registry import publish_sync
from tests.support import TEST_REDIS_URL, make_settings, settings_env


class Hook:
    """A local webhook receiver; ``fail_first`` answers 503 that many times first."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_first = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.received.append(await request.json())
        return web.Response(status=204)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    def events(self) -> list[tuple[str, str]]:
        return [(n["event"], n["key"]) for n in self.received]


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    h.server = TestServer(app)
    await h.server.start_server()
    yield h
    await h.server.close()


@pytest.fixture
async def aclient(rclient: redis.Redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def published(prefix: str, rclient: redis.Redis) -> Iterator[None]:
    publish_sync(rclient, Keys(prefix), _config())
    yield


def _config() -> Any:
    return parse_config(
        {
            "connections": [{"id": "conn", "user": "u1", "access_token": "t"}],
            "destinations": [
                {"id": "d1", "name": "D1", "connection": "conn", "audiences": {"aud-7": 7}}
            ],
        }
    )


def _settings(prefix: str, hook: Hook | None = None, **extra: str) -> Settings:
    env = settings_env(prefix, None, ALERT_WEBHOOK_RETRIES="1", ALERT_MIN_VOLUME="10", **extra)
    if hook is not None:
        env["ALERT_WEBHOOK_URL"] = hook.url
    return make_settings(env)


@pytest.fixture
async def evaluators(aclient: aioredis.Redis) -> AsyncIterator[Callable[..., Evaluator]]:
    """Evaluators on ``aclient`` (keyword arguments: Evaluator's), each with its own webhook
    session, closed after the test."""
    sessions: list[aiohttp.ClientSession] = []

    def make(settings: Settings, **kw: Any) -> Evaluator:
        sessions.append(aiohttp.ClientSession())
        return Evaluator(aclient, settings, Webhook(settings, sessions[-1]), **kw)

    yield make
    for session in sessions:
        await session.close()


# The rules, pure -------------------------------------------------------------------------


def test_rates_need_the_minimum_volume_and_a_rate_above_the_threshold(prefix: str) -> None:
    s = _settings(prefix, ALERT_FAILURE_RATE="0.1", ALERT_EXCLUSION_RATE="0.5")
    snap = Snapshot("d1")
    assert conditions(snap, LastHour(delivered=5, failed=4), s, pause_since_s=None, now_s=0) == []
    assert conditions(snap, LastHour(delivered=90, failed=10), s, pause_since_s=None, now_s=0) == []
    (c,) = conditions(snap, LastHour(delivered=89, failed=11), s, pause_since_s=None, now_s=0)
    assert (c.key, c.details["rate"]) == ("failure_rate:d1", 0.11)
    (c,) = conditions(snap, LastHour(received=20, excluded=11), s, pause_since_s=None, now_s=0)
    assert c.key == "exclusion_rate:d1" and "11 of 20 excluded" in c.summary


def test_pause_alerts_only_when_longer_than_the_threshold(prefix: str) -> None:
    s = _settings(prefix, ALERT_PAUSED_S="600")
    snap = Snapshot("d1", user="u1", paused_until_s=1000.0)
    assert conditions(snap, LastHour(), s, pause_since_s=500, now_s=900) == []
    (c,) = conditions(snap, LastHour(), s, pause_since_s=300, now_s=900)
    assert c.key == "rate_limit_pause:u1"
    # A pause that has ended is no incident, however long it was.
    assert conditions(snap, LastHour(), s, pause_since_s=0, now_s=1001) == []


def _doc(**fields: Any) -> DestinationStatus:
    """A status document of an idle destination, with ``fields`` in its JSON replaced."""
    flow = {"hours": 1, "from": None, "to": None}
    base: dict[str, Any] = {
        "destination": "d1",
        "name": "D1",
        "enabled": True,
        "generated_at": None,
        "pending": 0,
        "in_flight": 0,
        "lag_s": None,
        "oldest_pending_at": None,
        "lag_exact": True,
        "counters": {},
        "invalid_mapping_ids": [],
        "metrics": {"totals": {}, "window": flow, "hourly": []},
        "audiences": [],
        "connection": {"id": "conn", "known": True},
    }
    return DestinationStatus.model_validate({**base, **fields})


def _quota(user: str, paused_until_s: float | None) -> dict[str, Any]:
    return {
        "user": user,
        "limit": 100,
        "used": 0,
        "remaining": 100,
        "reset_s": 0.0,
        "paused_until_s": paused_until_s,
        "server_remaining": None,
        "server_reset_s": None,
        "window_s": 3600,
        "configured_limit": 100,
        "reported_limit": None,
        "outreach_spent": None,
        "governing_limit": 100,
        "governing": "configured",
        "governing_why": "",
    }


def test_status_document_gives_the_rules_what_they_need(prefix: str) -> None:
    doc = _doc(
        counters={"profiles_received": 3, "excluded:no_id": 1},
        invalid_mapping_ids=[7],
        quota=_quota("u1", 50.0),
        connection={"id": "conn", "known": True, "state": "reauth_required"},
        lag_s=1200.0,
    )
    snap = snapshot_from_status(doc)
    assert snap == Snapshot(
        "d1",
        {"profiles_received": 3, "excluded:no_id": 1},
        (7,),
        "u1",
        50.0,
        1200.0,
        "conn",
        "reauth_required",
        True,
    )
    keys = {
        c.key for c in conditions(snap, LastHour(), _settings(prefix), pause_since_s=None, now_s=0)
    }
    assert keys == {"invalid_mapping:d1:7", "reauth_required:conn", "lag:d1"}
    idle = snapshot_from_status(_doc(destination="d2"))
    assert idle == Snapshot("d2", connection="conn", enabled=True)
    assert conditions(idle, LastHour(), _settings(prefix), pause_since_s=None, now_s=0) == []


def test_a_status_document_with_a_misspelt_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="lag"):
        _doc(lag={"age_s": 5})


# Incidents on real Redis -----------------------------------------------------------------


@pytest.mark.usefixtures("published")
async def test_invalid_mapping_marked_by_the_store_alerts_once_then_recovers(
    prefix: str,
    aclient: aioredis.Redis,
    evaluators: Callable[..., Evaluator],
    rclient: redis.Redis,
    hook: Hook,
) -> None:
    settings = _settings(prefix, hook)
    evaluator = evaluators(settings)
    assert await evaluator.evaluate() == []
    await ProspectStore(aclient, settings.keys).mark_invalid_mapping("d1", 7)
    first = await evaluator.evaluate()
    second = await evaluator.evaluate()  # the condition still holds: no second message
    assert [n.key for n in first] == ["invalid_mapping:d1:7"] and second == []
    assert hook.events() == [("alert", "invalid_mapping:d1:7")]
    assert hook.received[0]["details"] == {"destination": "d1", "mapping_id": 7}
    publish_sync(rclient, settings.keys, _config())  # the corrected configuration
    await evaluator.evaluate()
    await evaluator.evaluate()
    assert hook.events()[1:] == [("recovery", "invalid_mapping:d1:7")]


@pytest.mark.usefixtures("published")
async def test_two_evaluators_at_once_send_one_alert(
    prefix: str, aclient: aioredis.Redis, evaluators: Callable[..., Evaluator], hook: Hook
) -> None:
    settings = _settings(prefix, hook)
    one, two = evaluators(settings), evaluators(settings)
    await ProspectStore(aclient, settings.keys).mark_invalid_mapping("d1", 7)
    for _ in range(3):
        await asyncio.gather(one.evaluate(), two.evaluate())
    assert hook.events() == [("alert", "invalid_mapping:d1:7")]


@pytest.mark.usefixtures("published")
async def test_failure_rate_over_the_last_hour_from_the_counters(
    prefix: str,
    aclient: aioredis.Redis,
    evaluators: Callable[..., Evaluator],
    rclient: redis.Redis,
    hook: Hook,
) -> None:
    settings = _settings(prefix, hook, ALERT_FAILURE_RATE="0.2")
    keys = settings.keys
    rclient.hset(keys.counters("d1"), mapping={"drain_delivered": 1000, "prospects_failed": 5})
    evaluator = evaluators(settings)
    t0 = 1_000_000.0
    assert await evaluator.evaluate(now_s=t0) == []  # old failures are not this hour's
    rclient.hincrby(keys.counters("d1"), "drain_delivered", 30)
    rclient.hincrby(keys.counters("d1"), "prospects_failed", 20)
    (n,) = await evaluator.evaluate(now_s=t0 + 60)
    assert n.key == "failure_rate:d1" and n.details["failed"] == 20 and n.details["of"] == 50
    rclient.hincrby(keys.counters("d1"), "drain_delivered", 200)
    (r,) = await evaluator.evaluate(now_s=t0 + 120)  # 20 of 250 failed: under 20 %
    assert (r.event, r.key, r.since_s) == ("recovery", "failure_rate:d1", t0 + 60)
    assert hook.events() == [("alert", "failure_rate:d1"), ("recovery", "failure_rate:d1")]
    # An hour later the burst has left the window.
    assert await evaluator.evaluate(now_s=t0 + 4000) == []


@pytest.mark.usefixtures("published")
async def test_unreachable_webhook_is_retried_then_resent_next_evaluation(
    prefix: str, aclient: aioredis.Redis, evaluators: Callable[..., Evaluator], hook: Hook
) -> None:
    settings = _settings(prefix, hook)
    evaluator = evaluators(settings)
    await ProspectStore(aclient, settings.keys).mark_invalid_mapping("d1", 7)
    hook.fail_first = 1  # one 503, then the retry lands
    assert len(await evaluator.evaluate()) == 1
    assert hook.events() == [("alert", "invalid_mapping:d1:7")]
    await ProspectStore(aclient, settings.keys).mark_invalid_mapping("d1", 9)
    hook.fail_first = 2  # both tries fail: sent at the next evaluation instead
    assert await evaluator.evaluate() == []
    assert [n.key for n in await evaluator.evaluate()] == ["invalid_mapping:d1:9"]
    assert hook.events()[-1] == ("alert", "invalid_mapping:d1:9")


async def test_one_lease_holder_at_a_time(prefix: str, aclient: aioredis.Redis) -> None:
    settings = _settings(prefix)
    a, b = Lease(aclient, settings, ttl_s=5), Lease(aclient, settings, ttl_s=5)
    assert await a.acquire() and await a.acquire()  # renewing is taking it again
    assert not await b.acquire()
    await b.release()  # not b's to release
    assert not await b.acquire()
    await a.release()
    assert await b.acquire()


@pytest.mark.usefixtures("published")
def test_alert_loop_threads_share_the_fleet_lease(prefix: str, rclient: redis.Redis) -> None:
    received: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", handle)
        server = TestServer(app)
        await server.start_server()
        settings = _settings(prefix, ALERT_INTERVAL_S="1")
        # Rounds 0.2 s apart (below the 1 s floor a deployment may set) keep the test short.
        update = {"alert_webhook_url": _secret(server, "/hook"), "alert_interval_s": 0.2}
        settings = settings.model_copy(update=update)
        loops = [AlertLoop(settings), AlertLoop(settings)]
        for loop in loops:
            loop.start()
        rclient.sadd(settings.keys.invalid_mappings("d1"), 7)
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not received and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            # Both loops run at least three more rounds: neither sends the alert again.
            after = [loop.rounds + 3 for loop in loops]
            while any(loop.rounds < n for loop, n in zip(loops, after, strict=True)):
                assert asyncio.get_running_loop().time() < deadline + 10, "the loops stalled"
                await asyncio.sleep(0.05)
        finally:
            for loop in loops:
                await asyncio.to_thread(loop.stop)
            await server.close()

    asyncio.run(serve())
    assert [(n["event"], n["key"]) for n in received] == [("alert", "invalid_mapping:d1:7")]


def _secret(server: TestServer, path: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(str(server.make_url(path)))


@pytest.mark.usefixtures("published")
async def test_a_connection_needing_reauthorization_alerts_once_and_recovers_on_reconnect(
    prefix: str,
    aclient: aioredis.Redis,
    evaluators: Callable[..., Evaluator],
    rclient: redis.Redis,
    hook: Hook,
) -> None:
    """From the connection store's real state, through the real status document."""
    import time

    from app.connections.crypto import default_cipher
    from app.connections.records import ConnectionStoreSync, with_reauth_required

    settings = _settings(prefix, hook)
    store = ConnectionStoreSync(rclient, settings.keys, default_cipher())
    evaluator = evaluators(settings)
    assert await evaluator.evaluate() == []
    store.update(
        "conn", lambda old: old and with_reauth_required(old, "invalid_grant", now=time.time())
    )
    await evaluator.evaluate()
    await evaluator.evaluate()
    assert hook.events() == [("alert", "reauth_required:conn")]
    publish_sync(rclient, settings.keys, _config())  # connected again: tokens installed
    assert store.get("conn").state == "active"  # type: ignore[union-attr]
    await evaluator.evaluate()
    assert hook.events()[1:] == [("recovery", "reauth_required:conn")]


def test_lag_does_not_alert_for_a_disabled_destination(prefix: str) -> None:
    s = _settings(prefix)
    late = s.alert_lag_s + 60
    on, off = Snapshot("d1", lag_s=late, enabled=True), Snapshot("d1", lag_s=late, enabled=False)
    assert [c.key for c in conditions(on, LastHour(), s, pause_since_s=None, now_s=0)] == ["lag:d1"]
    assert conditions(off, LastHour(), s, pause_since_s=None, now_s=0) == []
    assert snapshot_from_status(_doc(enabled=False)).enabled is False


@pytest.mark.usefixtures("published")
async def test_an_unsent_recovery_keeps_the_incident_and_is_sent_next_evaluation(
    prefix: str,
    aclient: aioredis.Redis,
    evaluators: Callable[..., Evaluator],
    rclient: redis.Redis,
    hook: Hook,
) -> None:
    settings = _settings(prefix, hook)
    keys = settings.keys
    evaluator = evaluators(settings)
    await ProspectStore(aclient, keys).mark_invalid_mapping("d1", 7)
    assert len(await evaluator.evaluate()) == 1
    rclient.delete(keys.invalid_mappings("d1"))
    hook.fail_first = 2  # both tries of the recovery fail
    assert await evaluator.evaluate() == []
    assert rclient.hexists(keys.alerts_open(), "invalid_mapping:d1:7")
    [r] = await evaluator.evaluate()
    assert (r.event, r.key) == ("recovery", "invalid_mapping:d1:7")
    assert hook.events() == [("alert", r.key), ("recovery", r.key)]
    assert not rclient.exists(keys.alerts_open())


@pytest.mark.usefixtures("published")
async def test_no_recovery_while_the_incident_is_being_sent_elsewhere(
    prefix: str,
    aclient: aioredis.Redis,
    evaluators: Callable[..., Evaluator],
    rclient: redis.Redis,
    hook: Hook,
) -> None:
    settings = _settings(prefix, hook)
    keys = settings.keys
    key = "invalid_mapping:d1:7"
    evaluator = evaluators(settings)
    await ProspectStore(aclient, keys).mark_invalid_mapping("d1", 7)
    assert len(await evaluator.evaluate()) == 1
    rclient.delete(keys.invalid_mappings("d1"))
    rclient.set(keys.alerts_sending(key), "1", px=60_000)  # another evaluator sends it
    assert await evaluator.evaluate() == []
    assert rclient.hexists(keys.alerts_open(), key)
    rclient.delete(keys.alerts_sending(key))
    assert [n.event for n in await evaluator.evaluate()] == ["recovery"]
    assert hook.events() == [("alert", key), ("recovery", key)]


@pytest.mark.usefixtures("published")
async def test_an_evaluator_that_lost_its_lease_sends_nothing(
    prefix: str, aclient: aioredis.Redis, evaluators: Callable[..., Evaluator], hook: Hook
) -> None:
    settings = _settings(prefix, hook)
    mine, theirs = Lease(aclient, settings, ttl_s=30), Lease(aclient, settings, ttl_s=30)
    evaluator = evaluators(settings, lease=mine)
    assert await mine.acquire()
    await ProspectStore(aclient, settings.keys).mark_invalid_mapping("d1", 7)
    await aclient.delete(settings.keys.alerts_lease())  # expired during a long evaluation
    assert await theirs.acquire()
    assert await evaluator.evaluate() == [] and hook.events() == []
    await theirs.release()
    assert [n.key for n in await evaluator.evaluate()] == ["invalid_mapping:d1:7"]
    assert hook.events() == [("alert", "invalid_mapping:d1:7")]
