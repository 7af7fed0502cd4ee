"""Failed authentications are throttled per client address, across every API process.

A request carrying a key (``Authorization`` or ``X-API-Key``) whose answer is 401 counts as a
failure of its address; past ``AUTH_FAILURE_LIMIT`` (a moving window in Redis) the address is
answered 429 with ``Retry-After`` before its key is even looked at, so guessing keys costs
the guesser time while clients that authenticate are never slowed. The address is the
connection's peer: behind a proxy that is the proxy (X-Forwarded-For is not trusted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

import redis.asyncio as aioredis
from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from app.api.jsonapi import error_response
from app.api.store_answers import store_failed
from app.core.redis_client import limits_storage
from app.core.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: An address with no failure in the window is not asked about again for this long: a
#: producer that authenticates pays one Redis call per second, not one per request. Its
#: first failure in this process ends that at once, so a guesser gains at most one failure
#: per API process per this many seconds.
CLEAN_FOR_S = 1.0
#: Addresses remembered as clean, at most (the oldest are forgotten first).
MAX_CLEAN = 10_000


class AuthThrottle:
    """Counts failed authentications per address and says when one must wait."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        storage = limits_storage(client, key_prefix=settings.keys.auth_failures())
        self._limiter = MovingWindowRateLimiter(storage)
        base = parse(settings.auth_failure_limit)
        self.limit: RateLimitItem = type(base)(base.amount, base.multiples, namespace="failed")
        self._clean_until: dict[str, float] = {}

    async def retry_after_s(self, address: str) -> int | None:
        """None when ``address`` may try to authenticate now, else seconds until it may."""
        if self._clean_until.get(address, 0.0) > time.monotonic():
            return None
        stats = await self._limiter.get_window_stats(self.limit, address)
        if stats.remaining >= self.limit.amount:
            self._remember_clean(address)
        if stats.remaining > 0:
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def failed(self, address: str) -> None:
        self._clean_until.pop(address, None)
        await self._limiter.hit(self.limit, address)

    def _remember_clean(self, address: str) -> None:
        self._clean_until.pop(address, None)
        self._clean_until[address] = time.monotonic() + CLEAN_FOR_S
        while len(self._clean_until) > MAX_CLEAN:
            del self._clean_until[next(iter(self._clean_until))]


THROTTLE = web.AppKey("auth_throttle", AuthThrottle)


#: Routes that never look at a key: a stray header there is no attempt.
OPEN_ROUTES = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/oauth/callback", "/status/assets/{name}"}
)


def _attempts_auth(request: web.Request) -> bool:
    if "Authorization" not in request.headers and "X-API-Key" not in request.headers:
        return False
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical not in OPEN_ROUTES


@web.middleware
async def throttle_failed_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 for an address over its failed-authentication budget; counts each new failure."""
    if not _attempts_auth(request):
        return await handler(request)
    throttle = request.app[THROTTLE]
    address = request.remote or "unknown"
    try:
        wait_s = await throttle.retry_after_s(address)
    except (RedisError, StorageError, OSError) as exc:
        # Every route that authenticates needs Redis: answered now, not after another wait
        # for a Redis that does not answer.
        return store_failed(request, exc)
    if wait_s is not None:
        return error_response(
            429,
            "Too many failed authentications",
            f"this address sent more than {throttle.limit} wrong keys; retry in {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )
    response = await handler(request)
    if response.status == 401:
        with suppress(RedisError, StorageError, OSError):
            await throttle.failed(address)
    return response
