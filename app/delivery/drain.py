"""Draining a destination: claim due prospects, take permits, send one PATCH each, settle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from app.config.destinations import Connection, Destination
from app.connections.crypto import cipher_for
from app.connections.oauth import AccessToken, RefreshOutcome, TokenManager
from app.connections.records import ConnectionStore
from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.core.settings import Settings
from app.outreach.answers import classify
from app.outreach.client import OutreachClient
from app.ratelimit.gate import Grant, QuotaGate
from app.store.counters import count_delivered, count_failed, drain_metrics, mapping_id_of
from app.store.prospects import Claimed, Outcome, ProspectStore, effective_window_ms
from app.store.registry import Registry

log = logging.getLogger(__name__)

#: A quota refusal this short is waited out inside the drain (up to the total), claims kept.
SHORT_WAIT_S = 0.25
SHORT_WAIT_TOTAL_S = 1.0
#: Backoff of a transient failure: base * 2**attempts, capped, with jitter.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0


def backoff_s(
    attempts: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
    rng: random.Random | None = None,
) -> float:
    raw = min(cap_s, base_s * 2.0 ** min(attempts, 20))
    return raw * (0.5 + 0.5 * (rng or random).random())


ATTRIBUTE_POINTER = "/data/attributes/"


class _NoPermit(Retryable):
    """A bisection half not sent: the quota has no permit for it now (not an error)."""


class _LeaseLost(Retryable):
    """Not sent: the claim expired while the request waited its turn, and another drain took
    the prospect over (it sends the current value; this snapshot may be stale)."""


def _subset(c: Claimed, fields: set[str]) -> Claimed:
    return replace(c, fields={f: c.fields[f] for f in fields})


async def failure_record(
    store: ProspectStore, dest: str, c: Claimed, err: DeliveryError, reason: str
) -> dict[str, Any]:
    """The dead letter of a claimed prospect's fields: what, why, and how to replay it."""
    at_ms = _now_ms()
    return {
        "id": f"{c.prospect}:{at_ms}:{min(c.fields)}",
        "destination": dest,
        "prospect": c.prospect,
        "reason": reason,
        "fields": c.fields,
        # The fields' versions, so a replay obeys newer-wins like any other change.
        "versions": await store.failed_versions(dest, c.prospect, list(c.fields)),
        "mapping_ids": sorted(filter(None, map(mapping_id_of, c.fields))),
        "status": err.status,
        "error": type(err).__name__,
        "detail": err.detail,
        "error_id": getattr(err, "error_id", None),
        "title": getattr(err, "title", None),
        "pointers": list(getattr(err, "pointers", ())),
        "attempts": c.attempts + 1,
        "at_ms": at_ms,
    }


def failure_reason(err: DeliveryError) -> str:
    """A short, countable reason: ``http_404``, ``retries_exhausted``, ..."""
    if isinstance(err, Permanent):
        return f"http_{err.status}"
    return "retries_exhausted"


def _now_ms() -> int:
    return int(time.time() * 1000)


class TokenRefresher(Protocol):
    """Access tokens, kept fresh (app/connections/oauth.py ``TokenManager``)."""

    async def current(self, conn_id: str) -> AccessToken | None:
        """The token to send with now (refreshed first when about to expire)."""
        ...

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        """Outreach refused the token of ``generation`` (a 401): refresh it, once."""
        ...


#: A prospect refused with a 401 is sent again at once after a refresh this many times;
#: after that its 401s are retried with backoff (a token Outreach refuses even fresh).
REFRESH_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Lot:
    """One destination's claimed batch with what sending it needs."""

    dest: Destination
    conn: Connection
    token: str
    #: The connection's access token (never logged) and its generation.
    access_token: str | None = field(default=None, repr=False)
    generation: int = 0
    #: When the connection was last (re)installed: a change's retry age starts no earlier.
    resumed_ms: int = 0


class Deliverer:
    def __init__(
        self,
        *,
        store: ProspectStore,
        registry: Registry,
        client: OutreachClient,
        gate: QuotaGate,
        settings: Settings,
        refresher: TokenRefresher | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.client = client
        self.gate = gate
        self.settings = settings
        # Without a refresher tokens are read (decrypted) but never refreshed.
        self.refresher: TokenRefresher = refresher or TokenManager(
            ConnectionStore(store.redis, store.keys, cipher_for(settings)),
            None,
            margin_s=settings.token_refresh_margin_s,
            wait_s=settings.token_refresh_wait_s,
        )
        self._http = asyncio.Semaphore(settings.http_concurrency)

    async def drain(
        self, dest_id: str, slot: str | None = None, *, stats: Counter[str] | None = None
    ) -> Counter[str]:
        """Send due prospects of one destination until none is due or the budget is spent.
        ``stats`` (returned) receives each batch's counts as it ends, so a caller still has
        the counts of a drain that raised."""
        stats = Counter() if stats is None else stats
        deadline = time.monotonic() + self.settings.drain_budget_s
        token = uuid.uuid4().hex
        try:
            while time.monotonic() < deadline:
                lot = await self._lot(dest_id, token)
                if lot is None:
                    break
                claimed = await self.store.claim(
                    dest_id,
                    now_ms=_now_ms(),
                    lease_ms=self.settings.lease_ms,
                    batch=self.settings.claim_batch,
                    token=token,
                )
                if not claimed:
                    break
                # Each batch's counts reach the metrics in one round trip when it is done.
                tally: Counter[str] = Counter(claimed=len(claimed))
                try:
                    more = await self._send_batch(lot, claimed, tally)
                finally:
                    stats.update(tally)
                    await self.store.count(dest_id, **drain_metrics(tally))
                if not more:
                    break
        finally:
            if slot is not None:
                await self.store.release_slot(dest_id, slot)
        return stats

    async def _lot(self, dest_id: str, token: str) -> Lot | None:
        dest = await self.registry.destination(dest_id)
        if dest is None:
            return None  # deleted: its keys went with it
        if not dest.enabled:
            # Disabled: changes keep coalescing until it is enabled again (the admin API's
            # enable lifts the hold through the registry's publish).
            await self._hold_blocked(dest_id, "disabled")
            return None
        conn = await self.registry.connection(dest.connection)
        access = None if conn is None else await self.refresher.current(conn.id)
        if conn is None or access is None:
            log.error("destination %s names unknown connection %s", dest_id, dest.connection)
            await self._hold_blocked(dest_id, "unknown connection")
            return None
        if access.blocked is not None:
            # Nothing is claimed: changes keep coalescing, no attempt is counted.
            await self._hold_blocked(dest_id, access.blocked)
            return None
        resumed = await self.store.resumed_ms(dest_id)
        return Lot(dest, conn, token, access.token, access.generation, resumed)

    async def _hold_blocked(self, dest_id: str, why: str) -> int:
        """Start no drain of ``dest_id`` for a while: it is disabled, or its connection cannot
        send (needs re-authorization, has no token yet, its refresh failed, or it is unknown).
        Returns the hold's end."""
        now = _now_ms()
        until = now + int(self.settings.reauth_hold_s * 1000)
        await self.store.hold(dest_id, until, now_ms=now)
        log.debug("destination %s held: connection blocked (%s)", dest_id, why)
        return until

    async def _send_batch(self, lot: Lot, claimed: list[Claimed], stats: Counter[str]) -> bool:
        """Send what the quota allows; False when it ran out (the drain should stop)."""
        invalid = await self.store.invalid_mappings(lot.dest.id)
        if invalid:
            kept = [await self._strip_invalid(lot, c, invalid, stats) for c in claimed]
            claimed = [c for c in kept if c is not None]
            if not claimed:
                return True
        grant = await self._permits(lot, len(claimed))
        go, wait = claimed[: grant.granted], claimed[grant.granted :]
        now = _now_ms()
        due = now
        if not go:
            # No permit at all: no drain starts for this destination before the budget
            # frees, so the backlog is not churned meanwhile.
            due = now + int(max(grant.wait_s, 0.05) * 1000)
            await self.store.hold(lot.dest.id, due, now_ms=now)
        try:
            for c in wait:
                # Back to pending (still coalescing); a partial grant's rest is due at once.
                await self._settle(lot, c, "defer", due_ms=due)
        except BaseException:
            # None of the permits will be used: they go back now, not when the grant expires.
            with contextlib.suppress(Exception):  # the original error is the one to see
                await self.gate.refund(lot.conn.user, grant.id, len(go))
            raise
        stats["deferred"] += len(wait)
        # Every send runs to its end (and counts into ``stats``) before the batch's tally is
        # written; the first error is raised after that.
        results = await asyncio.gather(
            *(self._send_one(lot, c, stats, grant.id) for c in go), return_exceptions=True
        )
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return bool(go)

    async def _permits(self, lot: Lot, want: int) -> Grant:
        """Permits for ``want`` requests. A refusal that says "in a moment" (the gate sends
        one request at a time near the end of a window) is waited out here, claims kept;
        only a longer wait makes the caller defer its prospects and hold the destination."""
        deadline = time.monotonic() + SHORT_WAIT_TOTAL_S
        grant = await self._permits_once(lot, want)
        while not grant.granted and grant.wait_s <= SHORT_WAIT_S < deadline - time.monotonic():
            await asyncio.sleep(max(grant.wait_s, 0.005))
            grant = await self._permits_once(lot, want)
        return grant

    async def _permits_once(self, lot: Lot, want: int) -> Grant:
        """The user's permits, within the destination's own share of them when it has one."""
        conn, dest, share = lot.conn, lot.dest.id, lot.dest.quota_share
        if share is None:
            return await self.gate.acquire(
                conn.user, want, limit=conn.rate_limit, reserve_share=conn.reserve_share
            )
        part, token = await self.gate.take_share(
            conn.user, dest, want, limit=conn.rate_limit, share=share
        )
        if not part.granted:
            return part
        grant = await self.gate.acquire(
            conn.user, part.granted, limit=conn.rate_limit, reserve_share=conn.reserve_share
        )
        await self.gate.refund_share(conn.user, dest, token, part.granted, grant.granted)
        return grant

    async def _send_one(self, lot: Lot, c: Claimed, stats: Counter[str], grant: str) -> None:
        err = await self._request(lot, c, stats, grant)
        if err is None:
            count_delivered(stats, lot.dest, c.fields)
        await self._outcome(lot, c, err, stats)

    async def _request(
        self, lot: Lot, c: Claimed, stats: Counter[str], grant: str
    ) -> DeliveryError | None:
        """One PATCH of ``c``'s fields (a permit is already held); None when Outreach took it.

        The gate hears of the permit exactly once: with Outreach's answer, with "no answer",
        or, when an exception (Redis, a cancelled drain, a bug) ends the attempt first, with
        "no answer" on the way out, so its hold ends now rather than when the grant expires."""
        answered = False

        async def answer(status: int, headers: Mapping[str, str], body: str | None) -> None:
            nonlocal answered
            answered = True
            await self.gate.observe(
                lot.conn.user, status, headers, body, sent_s=sent_s, grant=grant
            )

        access = lot.access_token
        err: DeliveryError | None
        sent_s = time.time()
        try:
            async with self._http:
                # The lease must cover the request (LEASE_MS > OUTREACH_TIMEOUT_S): renewed
                # now, at its turn, since the batch may have waited for connections longer.
                until = _now_ms() + self.settings.lease_ms
                if not await self.store.renew(lot.dest.id, c.prospect, lot.token, until_ms=until):
                    sent_s = time.time()
                    await answer(0, {}, None)
                    return _LeaseLost(None, "claim taken over by another drain before sending")
                stats["requests"] += 1
                sent_s = time.time()
                try:
                    if access is None:
                        raise Unauthorized(None, f"connection {lot.conn.id} has no access token")
                    resp = await self.client.patch_prospect(access, c.prospect, c.fields)
                except (Retryable, Unauthorized) as exc:
                    err = exc
                    # No answer, but the gate's careful single (if this was it) may go again.
                    await answer(0, {}, None)
                else:
                    await answer(resp.status, resp.headers, resp.body)
                    err = classify(
                        resp.status,
                        resp.headers,
                        resp.body,
                        fallback_pause_s=self.settings.rate_limit_fallback_pause_s,
                    )
        except BaseException:
            if not answered:
                with contextlib.suppress(Exception):  # the original error is the one to see
                    await answer(0, {}, None)
            raise
        return err

    async def _outcome(
        self, lot: Lot, c: Claimed, err: DeliveryError | None, stats: Counter[str]
    ) -> None:
        if err is None:
            stats["delivered"] += 1
            if not await self._settle(lot, c, "ok", fields=tuple(c.fields)):
                stats["duplicates"] += 1
            return
        if isinstance(err, _LeaseLost):
            stats["lease_lost"] += 1  # the drain that took it over settles it
            return
        stats[f"error_{type(err).__name__.lower()}"] += 1
        if isinstance(err, RateLimited):
            due = int(err.reset_s * 1000)
            await self.store.hold(lot.dest.id, due, now_ms=_now_ms())
            await self._settle(lot, c, "defer", due_ms=due)
        elif isinstance(err, Permanent):
            await self._permanent(lot, c, err, stats)
        elif isinstance(err, Unauthorized) and await self._unauthorized(lot, c):
            return
        else:
            await self._retry(lot, c, err)

    async def _retry(self, lot: Lot, c: Claimed, err: DeliveryError) -> None:
        """A transient failure: send again after a backoff, or record it as failed once the
        prospect has been failing for ``MAX_RETRY_AGE_S``. The age runs from its first failed
        attempt (time spent waiting for quota or while disabled does not count), and time the
        destination spent paused for re-authorization does not count either."""
        now = _now_ms()
        since = c.failing_since_ms or now
        if (now - max(since, lot.resumed_ms)) / 1000 > self.settings.max_retry_age_s:
            await self._fail(lot, c, err)
            return
        after = err.after_s if isinstance(err, Retryable) and err.after_s else None
        settings = self.settings
        backoff = backoff_s(
            c.attempts, base_s=settings.retry_backoff_base_s, cap_s=settings.retry_backoff_cap_s
        )
        delay = max(after or 0.0, backoff)
        await self._settle(lot, c, "retry", due_ms=now + int(delay * 1000))

    async def _unauthorized(self, lot: Lot, c: Claimed) -> bool:
        """A 401: refresh the token (one refresh in flight per connection everywhere) and
        send again. While the connection needs re-authorization (REAUTH_REQUIRED), or its
        refresh failed for the moment (UNAVAILABLE), the change waits without counting an
        attempt and the destination is held: it does not become a dead letter (a token that
        cannot be refreshed at all makes the connection ``reauth_required`` too). False (the
        connection is gone, NOT_REFRESHABLE, or a fresh token was refused again): the caller
        retries it like a transient error, so after ``MAX_RETRY_AGE_S`` it is recorded as
        failed (``retries_exhausted``)."""
        outcome = await self.refresher.after_unauthorized(lot.conn.id, lot.generation)
        if outcome is RefreshOutcome.REFRESHED and c.attempts < REFRESH_RETRIES:
            await self._settle(lot, c, "retry", due_ms=_now_ms())
            return True
        if outcome in (RefreshOutcome.REAUTH_REQUIRED, RefreshOutcome.UNAVAILABLE):
            until = await self._hold_blocked(lot.dest.id, outcome.value)
            await self._settle(lot, c, "defer", due_ms=until)
            return True
        return False

    async def _permanent(self, lot: Lot, c: Claimed, err: Permanent, stats: Counter[str]) -> None:
        """Fail what Outreach refused; when it named the bad fields, only those."""
        named = {p.rsplit("/", 1)[-1] for p in err.pointers if p.startswith(ATTRIBUTE_POINTER)}
        bad = named & set(c.fields)
        if not named and len(c.fields) > 1 and err.status in (400, 422):
            await self._bisect(lot, c, stats)
            return
        await self._note_invalid(lot, bad, err)
        if not bad or bad == set(c.fields):
            await self._fail(lot, c, err)
            return
        stats["fields_isolated"] += len(bad)
        await self._record(lot, _subset(c, bad), err, failure_reason(err))
        # The other fields go back to pending and are sent again at once.
        await self._settle(lot, c, "defer", due_ms=_now_ms(), fields=tuple(bad))

    async def _note_invalid(self, lot: Lot, bad: set[str], err: Permanent) -> None:
        """A 400 on a custom field: its mapping ID is unusable for the account."""
        if err.status != 400:
            return
        for mapping_id in filter(None, map(mapping_id_of, bad)):
            if await self.store.mark_invalid_mapping(lot.dest.id, mapping_id):
                log.error("destination %s: mapping ID %d refused", lot.dest.id, mapping_id)

    async def _bisect(self, lot: Lot, c: Claimed, stats: Counter[str]) -> None:
        """Outreach refused the PATCH without naming a field: send halves to find the bad
        ones, so the good fields still land. Each half costs a permit; without one, or on a
        transient error, the fields not yet settled simply wait in pending."""
        queue, delivered = [sorted(c.fields)], []
        limited: RateLimited | None = None
        transient: DeliveryError | None = None
        no_permit = False
        while queue:
            names = queue.pop()
            for part in (names[: len(names) // 2], names[len(names) // 2 :]):
                stats["bisect_requests"] += 1
                err = await self._send_part(lot, _subset(c, set(part)), stats)
                if isinstance(err, _LeaseLost):
                    stats["lease_lost"] += 1
                    return  # taken over: the other drain sends the whole snapshot again
                if err is None:
                    delivered += part
                elif isinstance(err, Permanent) and len(part) == 1:
                    await self._note_invalid(lot, set(part), err)
                    await self._record(lot, _subset(c, set(part)), err, failure_reason(err))
                    await self.store.drop_inflight(lot.dest.id, c.prospect, part)
                elif isinstance(err, Permanent):
                    queue.append(part)
                else:
                    if isinstance(err, _NoPermit):
                        no_permit = True
                    else:  # Outreach's answer, or none
                        stats[f"error_{type(err).__name__.lower()}"] += 1
                        if isinstance(err, RateLimited):
                            limited = err
                        else:
                            transient = err
                            # No answer says whether Outreach applied this half: a later
                            # value equal to the last confirmed one must not be skipped.
                            await self.store.forget_delivered(lot.dest.id, c.prospect, part)
                    queue.clear()
                    break
        until = None
        if limited is not None:
            # As for a whole PATCH: the destination waits for the reset Outreach named.
            until = int(limited.reset_s * 1000)
            await self.store.hold(lot.dest.id, until, now_ms=_now_ms())
        if delivered:
            # Delivered fields are recorded (the prospect was activated); the rest of the
            # snapshot returns to pending.
            stats["delivered"] += 1
            count_delivered(stats, lot.dest, {f: c.fields[f] for f in delivered})
            if not await self._settle(lot, c, "ok", fields=tuple(delivered)):
                stats["duplicates"] += 1
        elif until is not None:
            await self._settle(lot, c, "defer", due_ms=until)
        elif transient is not None:
            # Nothing landed: backoff and the retry age, as for a whole PATCH (settling "ok"
            # here would reset both and send the halves again every window, forever).
            await self._retry(lot, c, transient)
        elif no_permit:
            await self._settle(lot, c, "defer", due_ms=_now_ms())
        else:
            await self._settle(lot, c, "ok")  # every field failed on its own, and was recorded

    async def _send_part(
        self, lot: Lot, part: Claimed, stats: Counter[str]
    ) -> DeliveryError | None:
        permit = await self._permits(lot, 1)
        if not permit.granted:
            return _NoPermit(None, "no permit left for the next half")
        return await self._request(lot, part, stats, permit.id)

    async def _strip_invalid(
        self, lot: Lot, c: Claimed, invalid: set[int], stats: Counter[str]
    ) -> Claimed | None:
        """Fields of mapping IDs known to be unusable are failed without a request."""
        bad = {f for f in c.fields if mapping_id_of(f) in invalid}
        if not bad:
            return c
        stats["fields_invalid_mapping"] += len(bad)
        refusal = Permanent(None, "mapping ID marked invalid after Outreach refused its field")
        await self._record(lot, _subset(c, bad), refusal, "invalid_mapping")
        if bad == set(c.fields):
            await self._settle(lot, c, "drop")
            return None
        await self.store.drop_inflight(lot.dest.id, c.prospect, bad)
        return _subset(c, set(c.fields) - bad)

    async def _fail(self, lot: Lot, c: Claimed, err: DeliveryError) -> None:
        await self._record(lot, c, err, failure_reason(err))
        await self._settle(lot, c, "drop")

    async def _record(self, lot: Lot, c: Claimed, err: DeliveryError, reason: str) -> None:
        record = await failure_record(self.store, lot.dest.id, c, err, reason)
        await self.store.record_failure(lot.dest.id, str(record["id"]), record)
        counts: Counter[str] = Counter()
        count_failed(counts, reason, c.fields)
        await self.store.count(lot.dest.id, **counts)
        log.warning(
            "prospect update failed: destination=%s status=%s reason=%s",
            lot.dest.id,
            err.status,
            reason,
        )

    async def _settle(
        self,
        lot: Lot,
        c: Claimed,
        outcome: Outcome,
        *,
        due_ms: int = 0,
        fields: tuple[str, ...] = (),
    ) -> bool:
        return await self.store.settle(
            lot.dest.id,
            c.prospect,
            lot.token,
            outcome,
            now_ms=_now_ms(),
            window_ms=effective_window_ms(lot.dest, self.settings.coalesce_window_ms),
            due_ms=due_ms,
            fields=fields,
        )
