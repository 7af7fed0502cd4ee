"""The OAuth dance and the connections' admin routes of the HTTP app.

``GET /oauth/start?connection=<id>[&user=<Outreach user>]`` (admin) redirects to Outreach's
authorize page with a single-use, expiring ``state``; ``GET /oauth/callback`` checks it,
exchanges the code, stores the tokens (encrypted) and resumes the connection's destinations.
Every failure ends on a plain page saying what happened, never a stack trace or a secret.

``/v1/admin/connections[/{id}]`` lists, shows and deletes connections (metadata, state and
expiry: never tokens); ``POST /v1/admin/connections/{id}/authorize`` answers the authorize
URL for an operator to open.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import RedisError

from app.api.adminauth import admin_refusal
from app.api.bodies import BodyRefused, read_json
from app.api.jsonapi import error_response
from app.api.pages import page
from app.config.destinations import Connection
from app.connections.crypto import cipher_for
from app.connections.oauth import (
    OAuthError,
    authorize_url,
    connection_metadata,
    create_state,
    take_state,
    token_client,
)
from app.connections.records import ConflictError, ConnectionRecord, ConnectionStore
from app.core.errors import UnreadableRecord
from app.core.settings import Settings
from app.enroll.store import connection_enrolls
from app.store.bulk_state import connection_uses_bulk

log = logging.getLogger(__name__)

_SAFE_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class OAuthWeb:
    """What the handlers share: settings, Redis, the connection store, one HTTP session."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.redis = client
        self.store = ConnectionStore(client, settings.keys, cipher_for(settings))
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def configured(self) -> bool:
        s = self.settings
        return bool(s.outreach_client_id) and s.outreach_client_secret is not None

    async def new_authorization(self, conn_id: str, user: str | None) -> str:
        state = await create_state(
            self.redis,
            self.settings.keys,
            connection=conn_id,
            user=user,
            ttl_s=self.settings.oauth_state_ttl_s,
        )
        bulk = await connection_uses_bulk(self.redis, self.settings.keys, conn_id)
        enrolls = await connection_enrolls(self.redis, self.settings.keys, conn_id)
        return authorize_url(self.settings, state, bulk=bulk, sequences=enrolls)


OAUTH = web.AppKey("oauth_web", OAuthWeb)
NOT_CONFIGURED = (
    "no Outreach OAuth application is configured: set OUTREACH_CLIENT_ID and OUTREACH_CLIENT_SECRET"
)
CROSS_SITE = (
    "this link was followed from another site, and only a link opened directly may start an "
    "authorization: paste the address into the address bar, or create a link to hand on "
    "with 'outreach-sync connections authorize'"
)


def add_routes(app: web.Application, *, client: aioredis.Redis, settings: Settings) -> None:
    """Register the OAuth and connection-admin routes on ``app``."""
    app[OAUTH] = OAuthWeb(client, settings)
    app.router.add_get("/oauth/start", start)
    app.router.add_get("/oauth/callback", callback)
    app.router.add_get("/v1/admin/connections", list_connections)
    app.router.add_get("/v1/admin/connections/{connection_id}", show_connection)
    app.router.add_delete("/v1/admin/connections/{connection_id}", delete_connection)
    app.router.add_post("/v1/admin/connections/{connection_id}/authorize", authorize)

    async def close(app: web.Application) -> None:
        await app[OAUTH].close()

    app.on_cleanup.append(close)


# OAuth dance ------------------------------------------------------------------------------


#: What browsers say (``Sec-Fetch-Site``) of a navigation typed, pasted or bookmarked, or
#: followed from one of our own pages; clients that send no such header are not browsers.
TRUSTED_FETCH_SITES = frozenset({"none", "same-origin"})


async def start(request: web.Request) -> web.StreamResponse:
    """`GET /oauth/start`: redirect an operator to Outreach's authorize page.

    A browser resends Basic-auth credentials by itself, so another site could otherwise send
    an operator's browser here (request forgery) and, when Outreach skips the consent screen
    for an app already approved, bind a connection of its choosing to whoever is logged in
    to Outreach: a navigation that a browser marks as coming from another site is refused."""
    web_ = request.app[OAUTH]
    site = request.headers.get("Sec-Fetch-Site", "none").lower()
    if site not in TRUSTED_FETCH_SITES:
        return page(403, "Cannot start authorization", CROSS_SITE)
    refusal = admin_refusal(request, web_.settings)
    if refusal is not None:
        return refusal
    conn_id, user = request.query.get("connection", ""), request.query.get("user")
    if user == "":
        return page(400, "Cannot start authorization", "user must not be empty (leave it out)")
    checked = connection_metadata(conn_id, user)
    if isinstance(checked, str):
        return page(400, "Cannot start authorization", checked)
    if not web_.configured():
        return page(503, "Cannot start authorization", NOT_CONFIGURED)
    raise web.HTTPFound(await web_.new_authorization(conn_id, user))


async def callback(request: web.Request) -> web.StreamResponse:
    """`GET /oauth/callback`: where Outreach sends the user back."""
    web_, query = request.app[OAUTH], request.query
    pending = await take_state(web_.redis, web_.settings.keys, query.get("state", ""))
    if pending is None:
        return page(
            400,
            "Authorization link not valid",
            "This authorization is unknown, has expired or was already used. "
            "Start again from /oauth/start.",
        )
    conn_id = str(pending["connection"])
    error = query.get("error")
    if error is not None:
        code = error if _SAFE_CODE.fullmatch(error) else "unknown_error"
        return page(
            400 if code != "access_denied" else 403,
            "Authorization not granted",
            f"Outreach did not authorize connection {conn_id} ({code}). "
            "Nothing was changed; start again to retry.",
        )
    code = query.get("code", "")
    if not code:
        return page(400, "Authorization incomplete", "Outreach sent no authorization code.")
    return await _finish(web_, conn_id, pending.get("user"), code)


async def _finish(web_: OAuthWeb, conn_id: str, user: object, code: str) -> web.Response:
    client = token_client(web_.session, web_.settings)
    if client is None:
        return page(503, "Cannot finish authorization", NOT_CONFIGURED)
    # Checked before the code is spent: after the exchange nothing may fail but Redis.
    label = user if isinstance(user, str) and user else None
    checked = connection_metadata(conn_id, label)
    if isinstance(checked, str):
        return page(400, "Cannot finish authorization", f"{checked}. Nothing was changed.")
    deadline = time.monotonic() + web_.settings.token_refresh_wait_s
    try:
        tokens = await client.exchange_code(code, deadline=deadline)
    except OAuthError as exc:
        return page(
            502,
            "Outreach did not issue tokens",
            f"The token endpoint refused or failed ({exc.error}). Connection {conn_id} was "
            "not changed; start again, and check OUTREACH_CLIENT_ID, OUTREACH_CLIENT_SECRET "
            "and OUTREACH_REDIRECT_URI if it keeps failing.",
        )

    def metadata(old: ConnectionRecord | None) -> Connection:
        # From the record read inside the compare-and-set: a concurrent `config load`'s
        # rate_limit and reserve_share are kept.
        meta = old.metadata() if old is not None else checked
        return meta.model_copy(update={"user": label}) if label else meta

    try:
        rec = await web_.store.install(
            checked,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at(time.time()),
            scope=tokens.scope,
            source="oauth",
            metadata=metadata,
        )
    except (RedisError, ConflictError, ValidationError) as exc:
        log.error("connection %s: tokens issued but not stored: %s", conn_id, type(exc).__name__)
        return page(
            503,
            "Authorization not stored",
            f"Outreach issued tokens but connection {conn_id} could not be stored "
            f"({type(exc).__name__}). Start again from /oauth/start in a moment.",
        )
    try:
        dests = await web_.store.destinations(conn_id)
    except RedisError:
        dests = []  # stored all the same: only the list of its destinations is missing
    resumed = f" Destinations using it: {', '.join(dests)}." if dests else ""
    return page(
        200,
        "Connected to Outreach",
        f"Connection {conn_id} (Outreach user {rec.user}) is authorized.{resumed}",
    )


# Admin JSON -------------------------------------------------------------------------------


def _not_found(conn_id: str) -> web.Response:
    return error_response(404, "Unknown connection", f"no connection {conn_id!r}")


async def list_connections(request: web.Request) -> web.Response:
    web_ = request.app[OAUTH]
    refusal = admin_refusal(request, web_.settings)
    if refusal is not None:
        return refusal
    records = await web_.store.all()
    doc: dict[str, Any] = {"data": [await _doc(web_, r) for r in records]}
    broken = await web_.store.broken()
    if broken:
        doc["meta"] = {"broken": [b.as_dict() for b in broken]}
    return web.json_response(doc)


async def show_connection(request: web.Request) -> web.Response:
    web_ = request.app[OAUTH]
    refusal = admin_refusal(request, web_.settings)
    if refusal is not None:
        return refusal
    conn_id = request.match_info["connection_id"]
    try:
        rec = await web_.store.get(conn_id)
    except UnreadableRecord as exc:
        detail = f"{exc}; delete it, or install it again (config load, connections add, OAuth)"
        return error_response(409, "Connection record unreadable", detail)
    if rec is None:
        return _not_found(conn_id)
    return web.json_response({"data": await _doc(web_, rec)})


async def delete_connection(request: web.Request) -> web.Response:
    """Refused (409) while destinations use it, unless ``?force=true``."""
    web_ = request.app[OAUTH]
    refusal = admin_refusal(request, web_.settings)
    if refusal is not None:
        return refusal
    conn_id = request.match_info["connection_id"]
    force = request.query.get("force", "false").lower()
    if force not in ("true", "false"):
        return error_response(400, "Bad parameter", "force must be true or false")
    if not await web_.store.exists(conn_id):
        return _not_found(conn_id)
    dests = await web_.store.destinations(conn_id)
    if dests and force != "true":
        return error_response(
            409,
            "Connection in use",
            f"destinations {', '.join(dests)} use connection {conn_id!r}: point them at another "
            "connection first, or add ?force=true (they then stop sending; their changes wait)",
        )
    await web_.store.delete(conn_id)
    return web.Response(status=204)


async def authorize(request: web.Request) -> web.Response:
    """`POST /v1/admin/connections/{id}/authorize` ``{"user": ...}`` (optional body)."""
    web_ = request.app[OAUTH]
    refusal = admin_refusal(request, web_.settings)
    if refusal is not None:
        return refusal
    conn_id = request.match_info["connection_id"]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    user = body.get("user", _ABSENT)
    if user is _ABSENT:
        user = None
    elif not isinstance(user, str) or not user:
        detail = "user must be a non-empty string (leave it out for none)"
        return error_response(422, "Invalid user", detail, pointer="/user")
    checked = connection_metadata(conn_id, user)
    if isinstance(checked, str):
        pointer = "/user" if checked.startswith("user") else None
        return error_response(422, "Invalid connection", checked, pointer=pointer)
    if not web_.configured():
        return error_response(503, "OAuth not configured", NOT_CONFIGURED)
    url = await web_.new_authorization(conn_id, user)
    return web.json_response(
        {"authorize_url": url, "expires_in_s": web_.settings.oauth_state_ttl_s}, status=201
    )


_ABSENT = object()


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        doc = await read_json(request, default={})
    except BodyRefused as exc:
        return exc.response
    if not isinstance(doc, dict):
        return error_response(400, "Bad request body", "the body must be a JSON object")
    return doc


async def _doc(web_: OAuthWeb, rec: ConnectionRecord) -> dict[str, Any]:
    return {**rec.public(), "destinations": await web_.store.destinations(rec.id)}
