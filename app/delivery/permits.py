"""Quota permits for one destination's sends, within its share of its user's quota."""

from __future__ import annotations

import asyncio
import time

from app.delivery.lot import Lot
from app.ratelimit.gate import Grant, QuotaGate, Share

#: A quota refusal this short is waited out inside the drain (up to the total), claims kept.
SHORT_WAIT_S = 0.25
SHORT_WAIT_TOTAL_S = 1.0


class Permits:
    """Takes permits of the shared gate for a lot (PATCH and bulk alike)."""

    def __init__(self, gate: QuotaGate) -> None:
        self.gate = gate

    async def take(self, lot: Lot, want: int) -> Grant:
        """Permits for ``want`` requests. A refusal that says "in a moment" (the gate sends
        one request at a time near the end of a window) is waited out here, claims kept;
        only a longer wait makes the caller defer its prospects and hold the destination."""
        deadline = time.monotonic() + SHORT_WAIT_TOTAL_S
        grant = await self._once(lot, want)
        while not grant.granted and grant.wait_s <= SHORT_WAIT_S < deadline - time.monotonic():
            await asyncio.sleep(max(grant.wait_s, 0.005))
            grant = await self._once(lot, want)
        return grant

    async def _once(self, lot: Lot, want: int) -> Grant:
        """The user's permits, within the destination's own share of them when it has one."""
        conn, share = lot.conn, lot.dest.quota_share
        return await self.gate.acquire(
            conn.user,
            want,
            limit=conn.rate_limit,
            reserve_share=conn.reserve_share,
            share=None if share is None else Share(lot.dest.id, share),
        )
