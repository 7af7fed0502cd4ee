"""Draining a destination: claim due prospects, take permits, send one PATCH each, settle.

What happens after a send is `app.delivery.outcomes`; a PATCH refused without naming its
bad fields is split by `app.delivery.bisection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter

from app.connections.crypto import cipher_for
from app.connections.oauth import TokenManager
from app.connections.records import ConnectionStore
from app.core.errors import DeliveryError, Retryable, Unauthorized
from app.core.settings import Settings
from app.delivery.bisection import Bisection
from app.delivery.bulk import BulkDelivery
from app.delivery.lot import LeaseLost, Lot, NoPermit, TokenRefresher, now_ms
from app.delivery.outcomes import Outcomes, failure_reason, failure_record
from app.outreach.answers import Answer, classify, no_answer, parse_answer
from app.outreach.client import OutreachClient
from app.ratelimit.gate import Grant, QuotaGate, Share
from app.store.counters import count_delivered, drain_metrics
from app.store.prospects import Claimed, ProspectStore
from app.store.registry import Registry

__all__ = ["Deliverer", "Lot", "TokenRefresher", "failure_reason", "failure_record"]

log = logging.getLogger(__name__)

#: A quota refusal this short is waited out inside the drain (up to the total), claims kept.
SHORT_WAIT_S = 0.25
SHORT_WAIT_TOTAL_S = 1.0


class Deliverer:
    """Drains destinations: claims due prospects, takes quota permits, sends, settles."""

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
        self.outcomes = Outcomes(store=store, refresher=self.refresher, settings=settings)
        self.bisection = Bisection(self.outcomes, self._send_part)
        self.bulk = BulkDelivery(self)

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
                lot = await self.lot(dest_id, token)
                if lot is None:
                    break
                claimed = await self.store.claim(
                    dest_id,
                    now_ms=now_ms(),
                    lease_ms=self.settings.lease_ms,
                    batch=self.settings.claim_batch,
                    token=token,
                )
                if not claimed:
                    break
                # Each batch's counts reach the metrics in one round trip when it is done.
                tally: Counter[str] = Counter(claimed=len(claimed))
                try:
                    more = await self.bulk.send_batch(lot, claimed, tally)
                finally:
                    stats.update(tally)
                    await self.store.count(dest_id, **drain_metrics(tally))
                if not more:
                    break
        finally:
            if slot is not None:
                await self.store.release_slot(dest_id, slot)
        return stats

    async def lot(self, dest_id: str, token: str) -> Lot | None:
        """What a claim under ``token`` is sent with: the destination, its connection and an
        access token; None (the destination held) when it is gone, disabled or cannot send."""
        dest = await self.registry.destination(dest_id)
        if dest is None:
            if await self.registry.broken_destination(dest_id) is not None:
                # Its record cannot be read: its changes wait (nothing is lost) until an
                # operator replaces or deletes it; the other destinations go on.
                await self.outcomes.hold_blocked(dest_id, "record unreadable")
            return None  # else deleted: its keys went with it
        if not dest.enabled:
            # Disabled: changes keep coalescing until it is enabled again (the admin API's
            # enable lifts the hold through the registry's publish).
            await self.outcomes.hold_blocked(dest_id, "disabled")
            return None
        conn = await self.registry.connection(dest.connection)
        access = None if conn is None else await self.refresher.current(conn.id)
        if conn is None or access is None:
            log.error("destination %s names unknown connection %s", dest_id, dest.connection)
            await self.outcomes.hold_blocked(dest_id, "unknown connection")
            return None
        if access.blocked is not None:
            # Nothing is claimed: changes keep coalescing, no attempt is counted.
            await self.outcomes.hold_blocked(dest_id, access.blocked)
            return None
        resumed = await self.store.resumed_ms(dest_id)
        return Lot(dest, conn, token, access.token, access.generation, resumed)

    async def send_batch(self, lot: Lot, claimed: list[Claimed], stats: Counter[str]) -> bool:
        """Send what the quota allows; False when it ran out (the drain should stop)."""
        invalid = await self.store.invalid_mappings(lot.dest.id)
        if invalid:
            kept = [await self.outcomes.strip_invalid(lot, c, invalid, stats) for c in claimed]
            claimed = [c for c in kept if c is not None]
            if not claimed:
                return True
        grant = await self.permits(lot, len(claimed))
        go, wait = claimed[: grant.granted], claimed[grant.granted :]
        now = now_ms()
        due = now
        if not go:
            # No permit at all: no drain starts for this destination before the budget
            # frees, so the backlog is not churned meanwhile.
            due = now + int(max(grant.wait_s, 0.05) * 1000)
            await self.store.hold(lot.dest.id, due, now_ms=now)
        try:
            for c in wait:
                # Back to pending (still coalescing); a partial grant's rest is due at once.
                await self.outcomes.settle(lot, c, "defer", due_ms=due)
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

    async def permits(self, lot: Lot, want: int) -> Grant:
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
        conn, share = lot.conn, lot.dest.quota_share
        return await self.gate.acquire(
            conn.user,
            want,
            limit=conn.rate_limit,
            reserve_share=conn.reserve_share,
            share=None if share is None else Share(lot.dest.id, share),
        )

    async def _send_one(self, lot: Lot, c: Claimed, stats: Counter[str], grant: str) -> None:
        err = await self._request(lot, c, stats, grant)
        if err is None:
            count_delivered(stats, lot.dest, c.fields)
        await self.outcomes.apply(lot, c, err, stats, bisect=self.bisection.run)

    async def _request(
        self, lot: Lot, c: Claimed, stats: Counter[str], grant: str
    ) -> DeliveryError | None:
        """One PATCH of ``c``'s fields (a permit is already held); None when Outreach took it.

        The gate hears of the permit exactly once: with Outreach's answer, with "no answer",
        or, when an exception (Redis, a cancelled drain, a bug) ends the attempt first, with
        "no answer" on the way out, so its hold ends now rather than when the grant expires."""
        answered = False

        async def answer(reply: Answer) -> None:
            nonlocal answered
            answered = True
            await self.gate.observe(lot.conn.user, reply, sent_s=sent_s, grant=grant)

        access = lot.access_token
        err: DeliveryError | None
        sent_s = time.time()
        try:
            async with self._http:
                # The lease must cover the request (LEASE_MS > OUTREACH_TIMEOUT_S): renewed
                # now, at its turn, since the batch may have waited for connections longer.
                until = now_ms() + self.settings.lease_ms
                if not await self.store.renew(lot.dest.id, c.prospect, lot.token, until_ms=until):
                    sent_s = time.time()
                    await answer(no_answer())
                    return LeaseLost(None, "claim taken over by another drain before sending")
                stats["requests"] += 1
                sent_s = time.time()
                try:
                    if access is None:
                        raise Unauthorized(None, f"connection {lot.conn.id} has no access token")
                    resp = await self.client.patch_prospect(access, c.prospect, c.fields)
                except (Retryable, Unauthorized) as exc:
                    err = exc
                    # No answer, but the gate's careful single (if this was it) may go again.
                    await answer(no_answer())
                else:
                    reply = parse_answer(
                        resp.status,
                        resp.headers,
                        resp.body,
                        fallback_pause_s=self.settings.rate_limit_fallback_pause_s,
                    )
                    await answer(reply)
                    err = classify(reply)
        except BaseException:
            if not answered:
                with contextlib.suppress(Exception):  # the original error is the one to see
                    await answer(no_answer())
            raise
        return err

    async def _send_part(
        self, lot: Lot, part: Claimed, stats: Counter[str]
    ) -> DeliveryError | None:
        permit = await self.permits(lot, 1)
        if not permit.granted:
            return NoPermit(None, "no permit left for the next half")
        return await self._request(lot, part, stats, permit.id)
