"""The producers' HTTP API (aiohttp.web)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis
from aiohttp import web
from limits.errors import StorageError

from app.api import admin_routes as admin_api
from app.api import guide, openapi, status_page
from app.api import prometheus as prom
from app.api.bodies import BODY_TIMEOUT_S, MAX_BODY, BodyRefused, body_text, read_body
from app.api.jsonapi import STORE_RETRY_AFTER_S
from app.api.jsonapi import error_response as error
from app.api.producer_auth import GUARD as PRODUCER_GUARD
from app.api.producer_auth import ProducerGuard, guarded
from app.api.server import server_log
from app.api.store_answers import store_failed
from app.api.throttle import THROTTLE, AuthThrottle, throttle_failed_auth
from app.core.errors import StoreFault, StoreUnavailable, UnknownDestination
from app.core.redis_client import async_client
from app.core.settings import Settings
from app.ingest.batch import (
    DOCUMENT_TYPES,
    LINES_TYPES,
    MalformedDocument,
    ingest_async,
    read_profiles,
)
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


#: Media types an ingestion body may be declared as. None of them can be sent by an HTML
#: form, and a page's script needs a CORS preflight (never granted) to send them cross-site.
INGEST_TYPES = (*DOCUMENT_TYPES, *LINES_TYPES)


async def post_profiles(request: web.Request) -> web.Response:
    dest_id = request.match_info["destination_id"]
    registry = request.app[REGISTRY]
    dest = await registry.destination(dest_id)
    if dest is None:
        broken = await registry.broken_destination(dest_id)
        if broken is not None:
            # Nothing is stored for a destination nobody can read; the producer sends again.
            detail = f"destination {dest_id!r} cannot be read ({broken.reason}): ask an operator"
            headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
            return error(503, "Destination unavailable", detail, headers=headers)
        return error(404, "Unknown destination", f"no destination {dest_id!r}")
    if request.content_type not in INGEST_TYPES:
        given = request.headers.get("Content-Type")
        return error(
            415,
            "Unsupported media type",
            "send profiles as 'Content-Type: application/json' (one document) or "
            f"'application/x-ndjson' (one per line); got {given[:60]!r}"
            if given
            else "send a Content-Type: application/json or application/x-ndjson",
        )
    settings = request.app[SETTINGS]
    try:
        text = body_text(request, await read_body(request))
        if len(text) > PARSE_ON_THREAD_ABOVE_CHARS:
            profiles = await asyncio.to_thread(_profiles, text, request.content_type)
        else:
            profiles = _profiles(text, request.content_type)
    except BodyRefused as exc:
        return exc.response
    except MalformedDocument as exc:
        hint = " (one profile per line? send it as application/x-ndjson)" if exc.extra else ""
        return error(400, "Malformed JSON", f"{exc}; nothing of this body was stored{hint}")
    if not profiles:
        return error(400, "No profiles", 'send one profile, {"profiles": [...]}, or NDJSON')
    batch = await ingest_async(
        request.app[STORE], dest, profiles, window_ms=settings.coalesce_window_ms
    )
    status = 202 if batch.report.accepted else 422
    return web.json_response(batch.report.as_dict(results=batch.results), status=status)


def _profiles(text: str, media_type: str) -> list[Any]:
    return list(read_profiles(text, media_type=media_type))


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
    except Exception as exc:  # any failure means "not ready"
        # The reason names internal addresses: it goes to the log, not to the (open) answer.
        log.warning("not ready: Redis: %s", exc)
        doc = {"status": "unavailable", "redis": "unreachable"}
        headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
        return web.json_response(doc, status=503, headers=headers)
    return web.json_response({"status": "ready"})


@web.middleware
async def failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors every route may meet, as answers a client can act on: JSON:API, or a page for
    the routes a browser opens."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, "Body too large", exc.text or "request body too large")
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if request.match_info.http_exception is None:
            raise  # a route's own answer (a static file, say)
        return _no_route(request, exc)
    except UnknownDestination as exc:
        # Deleted while the request was on its way: nothing of the batch was kept.
        return error(404, "Unknown destination", f"no destination {exc.destination_id!r}")
    except (StoreUnavailable, StoreFault, redis.RedisError, StorageError) as exc:
        return store_failed(request, exc)


def _no_route(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error(
            405,
            "Method not allowed",
            f"{request.method} is not allowed here (allowed: {allowed})",
            headers={"Allow": allowed},
        )
    return error(404, "Not found", f"no route {request.path[:200]!r}; see /openapi.json")


def make_app(settings: Settings) -> web.Application:
    from app.api import oauth_routes as oauth_web
    from app.ops.startup import check_startup

    check_startup(settings)  # outside development: no start without the keys
    # auto_decompress off: bodies are inflated after authentication, bounded and off the
    # event loop (app/api/bodies.py). The logger keeps malformed requests out of ERROR.
    handler_args = {"auto_decompress": False, "logger": server_log}
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[throttle_failed_auth, failures],
        handler_args=handler_args,
    )
    client = async_client(settings)
    app[THROTTLE] = AuthThrottle(client, settings)
    app[MAX_BODY] = settings.max_body_bytes
    app[BODY_TIMEOUT_S] = settings.api_body_timeout_s
    app[SETTINGS] = settings
    app[STORE] = ProspectStore(client, settings.keys)
    app[REGISTRY] = Registry(client, settings.keys)
    app[GATE] = gate_for(client, settings)
    app[PRODUCER_GUARD] = ProducerGuard(client, settings)
    app.router.add_post("/v1/destinations/{destination_id}/profiles", guarded(post_profiles))
    app.router.add_get("/v1/destinations/{destination_id}/status", guarded(get_status))
    admin_api.add_routes(app, client=client, settings=settings, registry=app[REGISTRY])
    app.router.add_get("/openapi.json", openapi.serve)
    app[openapi.MAX_HOURS] = settings.metrics_retention_hours
    oauth_web.add_routes(app, client=client, settings=settings)
    sources = (app[STORE], app[REGISTRY], app[GATE], settings)
    status_page.add_routes(app, *sources)
    prom.add_routes(app, *sources)
    guide.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

    async def close_redis(_: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close_redis)
    return app
