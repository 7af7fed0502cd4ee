"""The producers' HTTP API (aiohttp.web)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import redis
from aiohttp import web

from app.api import admin_routes as admin_api
from app.api import openapi, status_page
from app.api import prometheus as prom
from app.api.jsonapi import error_response as error
from app.api.jsonapi import store_unavailable
from app.api.producer_auth import GUARD as PRODUCER_GUARD
from app.api.producer_auth import ProducerGuard, guarded
from app.core.errors import StoreUnavailable, UnknownDestination
from app.core.redis_client import async_client
from app.core.settings import Settings
from app.ingest.batch import ingest_async, read_profiles
from app.ops.status import BadQuery, destination_status, parse_hours
from app.ratelimit.gate import QuotaGate, gate_for
from app.store.prospects import ProspectStore
from app.store.registry import Registry

log = logging.getLogger(__name__)

#: A body longer than this is parsed on a thread: the event loop keeps answering meanwhile.
PARSE_ON_THREAD_ABOVE_CHARS = 1_000_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE = web.AppKey("store", ProspectStore)
REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", Settings)
GATE = web.AppKey("gate", QuotaGate)


async def post_profiles(request: web.Request) -> web.Response:
    dest_id = request.match_info["destination_id"]
    dest = await request.app[REGISTRY].destination(dest_id)
    if dest is None:
        return error(404, "Unknown destination", f"no destination {dest_id!r}")
    try:
        text = await request.text()
    except (UnicodeDecodeError, LookupError):  # LookupError: a charset Python does not know
        return error(400, "Bad encoding", "the body must be UTF-8")
    if len(text) > PARSE_ON_THREAD_ABOVE_CHARS:
        profiles = await asyncio.to_thread(lambda: list(read_profiles(text)))
    else:
        profiles = list(read_profiles(text))
    if not profiles:
        return error(400, "No profiles", 'send one profile, {"profiles": [...]}, or NDJSON')
    settings = request.app[SETTINGS]
    batch = await ingest_async(
        request.app[STORE], dest, profiles, window_ms=settings.coalesce_window_ms
    )
    status = 202 if batch.report.accepted else 422
    return web.json_response(batch.report.as_dict(results=batch.results), status=status)


async def get_status(request: web.Request) -> web.Response:
    dest_id = request.match_info["destination_id"]
    app = request.app
    try:
        hours = parse_hours(request.query.get("hours"), keys=app[SETTINGS].keys)
    except BadQuery as exc:
        return error(400, "Bad query", str(exc))
    doc = await destination_status(
        dest_id, store=app[STORE], registry=app[REGISTRY], gate=app[GATE], hours=hours
    )
    if doc is None:
        return error(404, "Unknown destination", f"no destination {dest_id!r}")
    return web.json_response(doc.as_json())


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await cast("Awaitable[bool]", request.app[STORE].redis.ping())
    except Exception as exc:  # any failure means "not ready"; the reason is in the answer
        return web.json_response({"status": "unavailable", "redis": str(exc)}, status=503)
    return web.json_response({"status": "ready"})


@web.middleware
async def failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors every route may meet, as JSON:API answers a client can act on."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, "Body too large", exc.text or "request body too large")
    except UnknownDestination as exc:
        # Deleted while the request was on its way: nothing of the batch was kept.
        return error(404, "Unknown destination", f"no destination {exc.destination_id!r}")
    except (StoreUnavailable, redis.RedisError) as exc:
        log.error("%s %s: Redis unavailable: %s", request.method, request.path, exc)
        return store_unavailable(
            "Redis cannot be reached, so this request may not have been recorded: send it "
            "again (a repeat is harmless: changes merge by version)"
        )


def make_app(settings: Settings) -> web.Application:
    from app.api import oauth_routes as oauth_web
    from app.ops.startup import check_startup

    check_startup(settings)  # outside development: no start without the keys
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[failures])
    client = async_client(settings)
    app[SETTINGS] = settings
    app[STORE] = ProspectStore(client, settings.keys)
    app[REGISTRY] = Registry(client, settings.keys)
    app[GATE] = gate_for(client, settings)
    app[PRODUCER_GUARD] = ProducerGuard(client, settings)
    app.router.add_post("/v1/destinations/{destination_id}/profiles", guarded(post_profiles))
    app.router.add_get("/v1/destinations/{destination_id}/status", guarded(get_status))
    admin_api.add_routes(app, client=client, settings=settings, registry=app[REGISTRY])
    app.router.add_get("/openapi.json", openapi.serve)
    oauth_web.add_routes(app, client=client, settings=settings)
    sources = (app[STORE], app[REGISTRY], app[GATE], settings)
    status_page.add_routes(app, *sources)
    prom.add_routes(app, *sources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

    async def close_redis(_: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close_redis)
    return app
