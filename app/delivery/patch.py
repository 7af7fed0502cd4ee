"""The PATCH sender: one PATCH per prospect, each on a permit of the quota gate, settled by
`app.delivery.outcomes`; a PATCH refused without naming its bad fields is split by
`app.delivery.bisection`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from app.core.errors import DeliveryError, Retryable, Unauthorized
from app.core.settings import Settings
from app.delivery.bisection import Bisection
from app.delivery.lot import LeaseLost, Lot, NoPermit, now_ms
from app.delivery.outcomes import Outcomes
from app.delivery.permits import Permits
from app.outreach.answers import Answer, classify, no_answer, parse_answer
from app.outreach.client import OutreachClient
from app.ratelimit.gate import QuotaGate
from app.store.counters import count_delivered
from app.store.prospects import Claimed, ProspectStore


class PatchSender:
    """Sends claimed prospects one PATCH each, as far as the quota allows now."""

    def __init__(
        self,
        *,
        store: ProspectStore,
        client: OutreachClient,
        gate: QuotaGate,
        permits: Permits,
        outcomes: Outcomes,
        settings: Settings,
    ) -> None:
        self.store = store
        self.client = client
        self.gate = gate
        self.permits = permits
        self.outcomes = outcomes
        self.settings = settings
        self._http = asyncio.Semaphore(settings.http_concurrency)
        self.bisection = Bisection(outcomes, self._send_part)

    async def send(self, lot: Lot, claimed: list[Claimed], stats: Counter[str]) -> bool:
        """Send what the quota allows; False when it ran out (the drain should stop)."""
        invalid = await self.store.invalid_mappings(lot.dest.id)
        if invalid:
            kept = [await self.outcomes.strip_invalid(lot, c, invalid, stats) for c in claimed]
            claimed = [c for c in kept if c is not None]
            if not claimed:
                return True
        grant = await self.permits.take(lot, len(claimed))
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
        permit = await self.permits.take(lot, 1)
        if not permit.granted:
            return NoPermit(None, "no permit left for the next half")
        return await self._request(lot, part, stats, permit.id)
