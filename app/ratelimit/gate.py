"""The quota gate: one Outreach request budget per user, shared through Redis by every worker.

A 429 pauses the user everywhere until the reset Outreach names. Otherwise, while Outreach
reports its budget (``X-RateLimit-*``), that figure governs, less our requests still in
flight, with a careful reserve, probes and a guard band (see ``lua/quota_reserve.lua``); when
it reports nothing, our moving window (``limits``' Redis storage) models the quota.

Requests in flight are counted per grant (``lua/quota_grants.lua``): every grant has an id,
each answer (:meth:`QuotaGate.observe` with ``grant=``) and each refund names it, and a grant
that goes ``grant_hold_s`` without either (its worker was killed, or lost track of it) stops
counting, so its permits come back instead of being lost for every later window.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import redis.asyncio
from limits import RateLimitItem, parse
from limits.aio.storage import MovingWindowSupport, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from app.core.keys import DEFAULT_RATE_LIMIT, Keys
from app.core.redis_client import limits_storage, limits_storage_uri
from app.core.settings import Settings
from app.outreach.answers import Answer
from app.ratelimit.governing import CAREFUL_MIN, CAREFUL_SHARE, QuotaLimits, quota_limits
from app.ratelimit.scripts import (
    ObserveArgs,
    RefundArgs,
    ReserveArgs,
    ShareArgs,
    encode,
    script,
)

#: Smallest wait ever returned with a refusal, so that a caller cannot spin on a zero wait.
MIN_WAIT_S = 0.05
#: Resets this close together are one server window (a server computing them per request jitters).
SAME_WINDOW_TOLERANCE_S = 1.0
#: Window takes tried when other workers win the race for the last permits; then back off.
MAX_TAKE_ATTEMPTS = 3
#: The most of a quota `reserve_share` may hold back: beyond it the service would starve.
MAX_RESERVE_SHARE = 0.5
#: An unanswered probe (first request after a reported window ended) may be repeated after this.
PROBE_TIMEOUT_S = 2.0
#: A server report older than this share of the window (within these bounds) is refreshed by
#: one probe before a burst: others may have spent the budget since it was made.
FRESH_SHARE = 0.05
FRESH_MIN_S = 0.05
FRESH_MAX_S = 1.0
#: Nothing is sent this close before a reported reset (this share of the window, within
#: these bounds): a request could land after the reset and spend the next window unseen.
GUARD_SHARE = 0.02
GUARD_MIN_S = 0.05
GUARD_MAX_S = 1.0
#: Added to the longest a live holder can go without answering a grant (see `grant_hold_s`).
GRANT_MARGIN_S = 5.0


def _hold_s(claim_batch: int, http_concurrency: int, timeout_s: float) -> float:
    return (math.ceil(claim_batch / http_concurrency) + 1) * timeout_s + GRANT_MARGIN_S


#: The hold `grant_hold_s` gives the settings' defaults (155 s).
_DEFAULTS = Settings.model_fields
DEFAULT_GRANT_HOLD_S = _hold_s(
    _DEFAULTS["claim_batch"].default,
    _DEFAULTS["http_concurrency"].default,
    _DEFAULTS["outreach_timeout_s"].default,
)

_STORE_ERRORS = (RedisError, StorageError, OSError)


class QuotaUnavailable(Exception):
    """The shared quota store (Redis) failed; nothing can be granted safely."""

    def __init__(self, user: str, operation: str) -> None:
        super().__init__(f"quota store unavailable for user {user!r} during {operation}")
        self.user = user
        self.operation = operation


@dataclass(frozen=True, slots=True)
class Grant:
    """``granted`` permits (0..want) to send now; when 0, try again in ``wait_s`` seconds.

    ``id`` names the permits in the shared store ("" when none were granted): report the
    answer to each request sent on them with ``observe(..., grant=id)`` and give back those
    never sent with :meth:`QuotaGate.refund`. A grant that hears of neither for the gate's
    hold stops counting as in flight (its holder died or lost track of it).
    """

    granted: int
    wait_s: float
    id: str = ""


@dataclass(frozen=True, slots=True)
class Share:
    """A cap within a user's quota: ``part`` (a destination) may spend ``share`` (0-1) of it."""

    part: str
    share: float


@dataclass(frozen=True, slots=True)
class QuotaState:
    """A user's quota as the CLI and status API show it; times are epoch seconds.

    ``server_remaining`` is the server's lowest reported remaining of the window minus our
    requests in flight; it and ``server_reset_s`` are None when no report is in force.
    ``limit`` is the configured limit (our own window's); ``limits`` says which limit
    governs: the configured one, the one Outreach last reported, and the lower of them.
    """

    limit: int
    used: int
    remaining: int
    reset_s: float
    paused_until_s: float | None
    server_remaining: int | None
    server_reset_s: float | None
    limits: QuotaLimits
    #: What Outreach itself last said was left in its window (no in-flight deduction).
    server_told: int | None = None


@dataclass(frozen=True, slots=True)
class _Reservation:
    paused_until_s: float
    permits: int
    server_spent_until_s: float
    kind: str
    mode: str


class QuotaGate:
    """Grants Outreach request permits per user, shared by every process on every host.

    ``storage_uri`` is a ``limits`` storage URI naming the same Redis database as ``redis``;
    for ``async+redis(s)://`` the storage shares ``redis``'s connection pool, so closing
    ``redis`` closes everything. ``prefix`` is the deployment's `Keys` prefix.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        *,
        storage_uri: str,
        prefix: str,
        fallback_pause_s: float = 60.0,
        probe_first: bool = True,
        grant_hold_s: float = DEFAULT_GRANT_HOLD_S,
    ) -> None:
        """``probe_first``: before anything is known of a user's budget, send one request
        and read Outreach's figure before a burst (False: our own window alone, from the
        start — for servers known not to report).

        ``grant_hold_s``: a grant's permits stop counting as in flight this long after the
        grant, its last answer or its last refund (see :func:`grant_hold_s`); it must exceed
        the longest a live holder goes without answering, or the gate may over-grant."""
        if grant_hold_s <= 0:
            raise ValueError(f"grant_hold_s must be positive, not {grant_hold_s}")
        self._redis, self._keys, self._prefix = redis, Keys(prefix), prefix
        self._fallback_pause_s = fallback_pause_s
        self._probe_first = probe_first
        self._hold_ms = max(1, math.ceil(grant_hold_s * 1000))
        store = _window_storage(storage_uri, prefix, redis)
        self._storage, self._window = store, cast(MovingWindowSupport, store)
        self._limiter = MovingWindowRateLimiter(store)
        self._reserve = script(redis, "quota_reserve")
        self._refund = script(redis, "quota_refund")
        self._observe = script(redis, "quota_observe")
        self._state = script(redis, "quota_state")
        self._share = script(redis, "share_take")

    async def aclose(self) -> None:
        """Close the ``limits`` storage's own client, if it has one (the given one stays open)."""
        client: Any = getattr(getattr(self._storage, "bridge", None), "storage", None)
        # On a cluster the storage uses the given client itself (redis_client.limits_storage).
        if client is not None and client is not self._redis:
            await client.aclose()

    async def acquire(
        self,
        user: str,
        want: int,
        *,
        limit: str = DEFAULT_RATE_LIMIT,
        reserve_share: float = 0.0,
        share: Share | None = None,
    ) -> Grant:
        """Grant up to ``want`` permits at once, never blocking.

        ``limit`` is a ``limits`` string ("10000/hour", "60 per 10 seconds");
        ``reserve_share`` (0.0-0.5) of it is kept unused for the user's own work in Outreach.
        With ``share``, the permits come from that part's share of the quota first (see
        :meth:`take_share`); what the user's quota then refuses goes back to the share.
        """
        if want < 0 or not 0.0 <= reserve_share <= MAX_RESERVE_SHARE:
            raise ValueError(f"bad acquire: want={want}, reserve_share={reserve_share}")
        if want == 0:
            return Grant(0, 0.0)
        if share is not None:
            return await self._acquire_within(user, want, limit, reserve_share, share)
        item = self._item(user, limit)
        cap = math.floor(round(item.amount * (1.0 - reserve_share), 6))
        try:
            return await self._acquire(user, item, cap, want, reserve_share)
        except _STORE_ERRORS as exc:
            raise QuotaUnavailable(user, "acquire") from exc

    async def _acquire_within(
        self, user: str, want: int, limit: str, reserve_share: float, share: Share
    ) -> Grant:
        part, token = await self.take_share(user, share.part, want, limit=limit, share=share.share)
        if not part.granted:
            return part
        grant = await self.acquire(user, part.granted, limit=limit, reserve_share=reserve_share)
        await self.refund_share(user, share.part, token, part.granted, grant.granted)
        return grant

    async def take_share(
        self, user: str, part: str, want: int, *, limit: str, share: float
    ) -> tuple[Grant, str]:
        """Up to ``want`` permits from ``part``'s ``share`` of ``user``'s quota (one
        destination's cap). Then take the user's permits with :meth:`acquire`, and give back
        what it refused with :meth:`refund_share` and the returned token."""
        item = self._item(user, limit)
        cap = max(1, math.floor(item.amount * share))
        token = uuid.uuid4().hex
        args = ShareArgs(int(time.time() * 1000), item.get_expiry() * 1000, cap, want, token)
        try:
            key = self._share_key(user, part)
            taken, free_ms = await self._share(keys=[key], args=[encode(args)])
        except _STORE_ERRORS as exc:
            raise QuotaUnavailable(user, "take_share") from exc
        grant = Grant(int(taken), 0.0) if taken else _refusal(int(free_ms) / 1000)
        return grant, token

    async def refund_share(self, user: str, part: str, token: str, taken: int, used: int) -> None:
        """Give back the permits ``taken - used`` of a :meth:`take_share` that were not used."""
        members = [f"{token}:{i}" for i in range(used + 1, taken + 1)]
        if members:
            try:
                await self._redis.zrem(self._share_key(user, part), *members)
            except _STORE_ERRORS as exc:
                raise QuotaUnavailable(user, "refund_share") from exc

    def _share_key(self, user: str, part: str) -> str:
        return f"{self._keys.quota(user)}:share:{part}"

    async def observe(
        self, user: str, answer: Answer, *, sent_s: float | None = None, grant: str = ""
    ) -> float | None:
        """Record an Outreach answer's rate-limit headers; a 429 pauses the user everywhere
        (until ``answer.resume_s``). The answer is parsed once, by the caller
        (:func:`app.outreach.answers.parse_answer`), for this and for the error it means.

        ``sent_s`` (epoch seconds the request left) lets the gate tell the answer to its
        outstanding careful request from late answers to earlier ones. ``grant`` (the
        :attr:`Grant.id` whose permit the request used) stops counting that permit as in
        flight and keeps the rest of the grant alive; pass it for transport failures too
        (:func:`app.outreach.answers.no_answer`), once per request.

        Returns the epoch second the user is paused until after a 429 (the parsed reset, or
        a later pause already in force), else None.
        """
        now = time.time()
        budget, until = answer.budget, answer.resume_s
        remaining = None if budget is None else budget.remaining
        if remaining is None and until is None and sent_s is None and not grant:
            return None
        reset = budget.reset_s if budget is not None else None
        if reset is None:
            # Unknown reset: hold the report briefly; the next response brings a fresh one.
            reset = until if until is not None else now + self._fallback_pause_s
        args = ObserveArgs(
            now_s=now,
            reset_s=reset,
            tolerance_s=SAME_WINDOW_TOLERANCE_S,
            hold_ms=self._hold_ms,
            remaining=remaining,
            limit=None if budget is None else budget.limit,
            pause_until_s=until,
            sent_s=sent_s,
            answered=answer.answered,
            grant=grant,
        )
        paused = await self._record(user, "observe", args)
        return None if until is None else max(paused, until)

    async def refund(self, user: str, grant: str, permits: int) -> None:
        """Give back ``permits`` of grant ``grant`` (a :attr:`Grant.id`) that will not be sent;
        the rest of the grant, if any, stays in flight. A grant already expired is left
        alone (its permits already came back)."""
        if permits < 0:
            raise ValueError(f"bad refund: permits={permits}")
        if not grant or not permits:
            return
        try:
            await self._give_back(user, grant, permits)
        except _STORE_ERRORS as exc:
            raise QuotaUnavailable(user, "refund") from exc

    async def pause(self, user: str, until_s: float) -> None:
        """Stop granting for ``user`` everywhere until ``until_s``; only ever extends a pause."""
        args = ObserveArgs(
            now_s=time.time(),
            reset_s=0.0,
            tolerance_s=SAME_WINDOW_TOLERANCE_S,
            hold_ms=self._hold_ms,
            pause_until_s=until_s,
        )
        await self._record(user, "pause", args)

    async def state(self, user: str, *, limit: str = DEFAULT_RATE_LIMIT) -> QuotaState:
        """The user's window usage, pause and last server report."""
        item = self._item(user, limit)
        ns = self._keys.quota(user)
        now = time.time()
        try:
            reset_s, remaining = await self._limiter.get_window_stats(item)
            keys = [f"{ns}:pause", f"{ns}:server", *self._grant_keys(ns)]
            paused_raw, *server = await self._state(keys=keys)
        except _STORE_ERRORS as exc:
            raise QuotaUnavailable(user, "state") from exc
        paused, server_reset = _num(paused_raw), _num(server[1])
        active = server[0] is not None and server_reset > now
        return QuotaState(
            limit=item.amount,
            used=item.amount - remaining,
            remaining=remaining,
            reset_s=reset_s,
            paused_until_s=paused if paused > now else None,
            server_remaining=max(0, int(_num(server[0]) - _num(server[2]))) if active else None,
            server_reset_s=server_reset if active else None,
            limits=quota_limits(item.amount, int(_num(server[3])) if server[3] else None),
            server_told=int(_num(server[0])) if active else None,
        )

    # Internals ----------------------------------------------------------------------------

    async def _acquire(
        self, user: str, item: RateLimitItem, cap: int, want: int, reserve_share: float
    ) -> Grant:
        key, expiry = item.key_for(), item.get_expiry()
        oldest, used = await self._window.get_moving_window(key, cap, expiry)
        free = max(0, cap - used)
        grant = uuid.uuid4().hex
        res = await self._reserve_server(user, want, item, reserve_share, free, grant)
        if res.mode == "server":
            # Outreach's own figure governs; our window is not consulted.
            if res.permits:
                return Grant(res.permits, 0.0, grant)
            return _refusal(max(res.paused_until_s, res.server_spent_until_s))
        if res.permits == 0:
            blockers = [res.paused_until_s, res.server_spent_until_s]
            if free == 0:
                blockers.append(oldest + expiry)
            return _refusal(max(blockers))
        granted, next_free_s = await self._take(key, cap, expiry, res.permits)
        if granted < res.permits:
            # Our window refused some after the server reserved them: they never fly.
            probe = res.kind == "probe" and not granted
            await self._give_back(user, grant, res.permits - granted, probe=probe)
        return Grant(granted, 0.0, grant) if granted else _refusal(next_free_s)

    async def _take(self, key: str, cap: int, expiry: int, cost: int) -> tuple[int, float]:
        """Hit the window with ``cost``; after a lost race, with what is left."""
        for _ in range(MAX_TAKE_ATTEMPTS):
            if await self._window.acquire_entry(key, cap, expiry, amount=cost):
                return cost, 0.0
            oldest, used = await self._window.get_moving_window(key, cap, expiry)
            cost = min(cost, cap - used)
            if cost <= 0:
                return 0, oldest + expiry
        return 0, 0.0

    async def _give_back(self, user: str, grant: str, permits: int, *, probe: bool = False) -> None:
        ns = self._keys.quota(user)
        keys = [f"{ns}:server", *self._grant_keys(ns)]
        args = RefundArgs(grant, permits, probe, self._hold_ms)
        await self._refund(keys=keys, args=[encode(args)])

    def _grant_keys(self, ns: str) -> list[str]:
        """The grants in flight of quota namespace ``ns``: expiries (zset), permits out (hash)."""
        return [f"{ns}:grants", f"{ns}:grants:out"]

    async def _reserve_server(
        self, user: str, want: int, item: RateLimitItem, reserve_share: float, free: int, grant: str
    ) -> _Reservation:
        ns = self._keys.quota(user)
        expiry = item.get_expiry()
        args = ReserveArgs(
            now_s=time.time(),
            want=want,
            probe_timeout_s=PROBE_TIMEOUT_S,
            careful_share=CAREFUL_SHARE,
            careful_min=CAREFUL_MIN,
            fresh_s=min(FRESH_MAX_S, max(FRESH_MIN_S, expiry * FRESH_SHARE)),
            reserve_share=reserve_share,
            amount=item.amount,
            free=free,
            guard_s=min(GUARD_MAX_S, max(GUARD_MIN_S, expiry * GUARD_SHARE)),
            probe_first=self._probe_first,
            grant=grant,
            hold_ms=self._hold_ms,
        )
        keys = [f"{ns}:pause", f"{ns}:server", *self._grant_keys(ns)]
        raw = await self._reserve(keys=keys, args=[encode(args)])
        return _Reservation(
            paused_until_s=_num(raw[0]),
            permits=int(raw[1]),
            server_spent_until_s=_num(raw[2]),
            kind=_text(raw[3]),
            mode=_text(raw[4]),
        )

    async def _record(self, user: str, op: str, args: ObserveArgs) -> float:
        ns = self._keys.quota(user)
        keys = [f"{ns}:server", f"{ns}:pause", *self._grant_keys(ns)]
        try:
            raw = await self._observe(keys=keys, args=[encode(args)])
        except _STORE_ERRORS as exc:
            raise QuotaUnavailable(user, op) from exc
        return _num(raw)

    def _item(self, user: str, limit: str) -> RateLimitItem:
        ns = self._keys.quota(user)
        head = f"{self._prefix}:"
        if not ns.startswith(head):
            raise ValueError(f"quota namespace {ns!r} does not start with {head!r}")
        return _window_item(limit, f"{ns[len(head) :]}:window")


def _window_storage(uri: str, prefix: str, redis: redis.asyncio.Redis) -> Storage:
    # The caller's client already names the database (and follows a Sentinel master): the
    # storage shares its pool (on a cluster, the client itself). limits prepends "<prefix>:",
    # so the window key lands under quota(user).
    schemes = ("async+redis://", "async+rediss://", "async+redis+sentinel://")
    if not uri.startswith((*schemes, "async+redis+cluster://")):
        raise ValueError(f"the quota gate keeps its windows in Redis, not {uri!r}")
    return limits_storage(redis, key_prefix=prefix)


@lru_cache(maxsize=4096)
def _window_item(limit: str, namespace: str) -> RateLimitItem:
    base = parse(limit)
    return type(base)(base.amount, base.multiples, namespace=namespace)


def _refusal(until_s: float) -> Grant:
    return Grant(0, max(until_s - time.time(), MIN_WAIT_S))


def _num(raw: bytes | str | int | float | None) -> float:
    return float(_text(raw) or 0)


def _text(raw: bytes | str | int | float | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def grant_hold_s(settings: Settings) -> float:
    """How long a grant may go without an answer or a refund before its permits stop counting
    as in flight (every answer renews it). A drain sends one claimed batch at a time: at
    most ``CLAIM_BATCH`` requests outstanding, ``HTTP_CONCURRENCY`` at once, each bounded by
    ``OUTREACH_TIMEOUT_S``. So a grant's next answer comes within one timeout while it has a
    request in flight, and even a request queued behind the rest of its batch (a bisection's
    half, granted on its own) is answered within one timeout per round of the batch plus its
    own. Too short a hold could over-grant; too long only delays the return of the permits
    of a worker that died."""
    return _hold_s(settings.claim_batch, settings.http_concurrency, settings.outreach_timeout_s)


def gate_for(client: redis.asyncio.Redis, settings: Settings) -> QuotaGate:
    """The gate of a deployment: its Redis, key prefix, fallback pause and grant hold."""
    return QuotaGate(
        client,
        storage_uri=limits_storage_uri(settings),
        prefix=settings.redis_key_prefix,
        fallback_pause_s=settings.rate_limit_fallback_pause_s,
        grant_hold_s=grant_hold_s(settings),
    )
