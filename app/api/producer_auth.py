"""Who may ingest: a producer API key (or the admin key), scoped to destinations, rate-bounded.

Wraps the producers' routes (``guarded(handler)``). Unauthenticated ingestion is refused in
every mode: a development deployment creates a key (``outreach-sync keys create``) as
``make run`` does. The check runs before the body is read, so a refused request costs little.

Keys come only as ``Authorization: Bearer`` or ``X-API-Key``, never as HTTP Basic: a browser
resends cached Basic credentials by itself, so another site's form could write through an
operator's browser; a header a page sets needs a CORS preflight we never grant. Requests a
browser marks as cross-site (``Sec-Fetch-Site``, a foreign ``Origin``) are refused outright.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from app.admin.producer_keys import KeyRefused, ProducerKey, ProducerKeys
from app.api.adminauth import bearer_token, secret_bytes
from app.api.browsers import cross_site_refusal
from app.api.jsonapi import error_response, store_unavailable
from app.core.errors import store_error, unreachable
from app.core.redis_client import limits_storage
from app.core.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHALLENGE = 'Bearer realm="outreach-sync"'
#: Rate-limit identity of requests made with the admin key.
ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is: a producer key, or the operator's admin key (key None)."""

    key: ProducerKey | None

    @property
    def identity(self) -> str:
        return ADMIN if self.key is None else self.key.key_id

    def allows(self, destination_id: str) -> bool:
        return self.key is None or self.key.allows(destination_id)


class MissingKey(KeyRefused):
    """The request carries no key at all."""


class ProducerGuard:
    """Authentication, scope and request rate of the producers' routes."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.keys = ProducerKeys(client, settings.keys)
        self._admin_key = settings.admin_api_key
        storage = limits_storage(client, key_prefix=settings.keys.producer_rate())
        self._limiter = MovingWindowRateLimiter(storage)
        base = parse(settings.producer_rate_limit)
        #: Requests per key, one moving window per key id.
        self.limit: RateLimitItem = type(base)(base.amount, base.multiples, namespace="window")

    async def caller(self, request: web.Request) -> Caller:
        """The request's caller; ``KeyRefused`` when it carries no usable key."""
        presented = request.headers.get("X-API-Key", "").strip() or bearer_token(request)
        if not presented:
            scheme = request.headers.get("Authorization", "").partition(" ")[0].lower()
            basic = " (HTTP Basic is not accepted on producer routes)" if scheme == "basic" else ""
            raise MissingKey(
                "send a producer API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                + basic
            )
        admin = self._admin_key
        if admin is not None and hmac.compare_digest(
            secret_bytes(presented), secret_bytes(admin.get_secret_value())
        ):
            return Caller(None)
        return Caller(await self.keys.verify(presented))

    async def retry_after_s(self, caller: Caller) -> int | None:
        """None when the caller may make one more request now, else seconds until it may."""
        if await self._limiter.hit(self.limit, caller.identity):
            return None
        stats = await self._limiter.get_window_stats(self.limit, caller.identity)
        return max(1, math.ceil(stats.reset_time - time.time()))


GUARD = web.AppKey("producer_guard", ProducerGuard)


def guarded(handler: Handler) -> Handler:
    """``handler`` behind the producer check: 401 without a valid key, 429 over the rate,
    403 for a destination outside the key's scope."""

    async def check(request: web.Request) -> web.StreamResponse:
        refused = cross_site_refusal(request)
        if refused is not None:
            return refused
        guard = request.app[GUARD]
        try:
            caller = await guard.caller(request)
            wait_s = await guard.retry_after_s(caller)
        except KeyRefused as exc:
            return _unauthorized(exc)
        except (RedisError, StorageError, OSError) as exc:
            if not unreachable(exc):
                raise store_error(exc) from exc  # a bug: the failures middleware answers 500
            return store_unavailable("Redis cannot be reached to check the API key: send again")
        if wait_s is not None:
            return error_response(
                429,
                "Too many requests",
                f"this API key may make {guard.limit} requests; retry in {wait_s} s",
                headers={"Retry-After": str(wait_s)},
            )
        dest = request.match_info["destination_id"]
        if not caller.allows(dest):
            return error_response(
                403,
                "Destination not allowed",
                f"API key {caller.identity} may not use destination {dest!r}",
            )
        return await handler(request)

    return check


def _unauthorized(exc: KeyRefused) -> web.Response:
    # RFC 6750: no error code when no credentials were sent at all.
    missing = isinstance(exc, MissingKey)
    challenge = CHALLENGE if missing else f'{CHALLENGE}, error="invalid_token"'
    headers: dict[str, Any] = {"WWW-Authenticate": challenge}
    return error_response(401, "Authentication required", exc.reason, headers=headers)
