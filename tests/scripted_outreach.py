"""A scripted Outreach for drains run in process on real Redis: ``FakeOutreach`` answers each
PATCH as a test says, ``Tokens`` always has one, and ``warm_deliverer`` builds the drain with
the real store, registry and quota gate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from app.config.destinations import parse_config
from app.connections.oauth import AccessToken, RefreshOutcome
from app.core.keys import Keys
from app.core.settings import Settings
from app.delivery.drain import Deliverer
from app.outreach.client import Response
from app.ratelimit.gate import gate_for
from app.store.prospects import ProspectStore, encode
from app.store.registry import Registry, publish_sync
from tests.support import make_settings, settings_env

D = "d"
Answer = Callable[[int, Mapping[str, Any]], Any]


class FakeOutreach:
    """``patch_prospect`` answers with ``answer(prospect, fields)``: a Response, or raises."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[tuple[int, dict[str, Any]]] = []

    async def patch_prospect(
        self, access_token: str, prospect: int, fields: Mapping[str, Any]
    ) -> Response:
        self.calls.append((prospect, dict(fields)))
        got = self.answer(prospect, fields)
        if asyncio.iscoroutine(got):
            got = await got
        assert isinstance(got, Response)
        return got


class Tokens:
    async def current(self, conn_id: str) -> AccessToken | None:
        return AccessToken(conn_id, "test-token", 1)

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        return RefreshOutcome.REFRESHED


def ok() -> Response:
    reset = str(int(time.time()) + 3600)
    quota = {"X-RateLimit-Limit": "10000", "X-RateLimit-Remaining": "9000"}
    return Response(200, {**quota, "X-RateLimit-Reset": reset}, '{"data": {}}')


def setup_destination(prefix: str, rclient: redis.Redis, **extra: str) -> Settings:
    env = {"COALESCE_WINDOW_MS": "0", "CLAIM_BATCH": "10", **extra}
    settings = make_settings(settings_env(prefix, None, **env))
    config = parse_config(
        {
            "connections": [{"id": "c", "user": f"{prefix}-user", "access_token": "t"}],
            "destinations": [
                {
                    "id": D,
                    "name": D,
                    "connection": "c",
                    "audiences": {"good": 1, "bad": 7},
                    "attributes": {"firstName": "firstName"},
                }
            ],
        }
    )
    publish_sync(rclient, Keys(prefix), config)
    return settings


async def warm_deliverer(
    aclient: aioredis.Redis, settings: Settings, outreach: FakeOutreach
) -> tuple[Deliverer, ProspectStore]:
    store = ProspectStore(aclient, settings.keys)
    deliverer = Deliverer(
        store=store,
        registry=Registry(aclient, settings.keys),
        client=outreach,  # type: ignore[arg-type]
        gate=gate_for(aclient, settings),
        settings=settings,
        refresher=Tokens(),
    )
    # A cold gate sends one probe first: warm it (prospect 999, whose field lands), so the
    # test's batch goes out at once; then start the counts afresh.
    await pending(store, {999: {"custom1": "realized"}})
    await deliverer.drain(D)
    await aclient.delete(settings.keys.counters(D))
    return deliverer, store


async def pending(store: ProspectStore, changes: Mapping[int, Mapping[str, Any]]) -> None:
    now = int(time.time() * 1000)
    await store.merge(
        D,
        {p: [(f, encode(v), now) for f, v in fields.items()] for p, fields in changes.items()},
        now_ms=now - 10,
        window_ms=0,
    )
