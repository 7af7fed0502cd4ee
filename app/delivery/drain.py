"""Draining a destination: claim due prospects and hand them, as a small pipeline, to the
senders — bulk (`app.delivery.bulk`) takes the groups of identical changes it can, PATCH
(`app.delivery.patch`) sends the rest; what happens after a send is `app.delivery.outcomes`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from app.config.destinations import Destination
from app.connections.crypto import cipher_for
from app.connections.oauth import TokenManager
from app.connections.records import ConnectionStore
from app.core.errors import unreachable
from app.core.settings import Settings
from app.delivery.bulk import BulkSender
from app.delivery.lot import Lot, TokenRefresher, now_ms
from app.delivery.lots import Lots
from app.delivery.outcomes import Outcomes, failure_reason, failure_record
from app.delivery.patch import PatchSender
from app.delivery.permits import Permits
from app.enroll import Caller, Enrollment, EnrollStore, Mailboxes, Sending
from app.outreach.client import OutreachClient
from app.ratelimit.gate import QuotaGate, QuotaUnavailable
from app.resolve.calls import Calls
from app.resolve.emails import EmailStore
from app.resolve.resolver import Resolver
from app.store.audience_map import learned_table
from app.store.counters import drain_metrics
from app.store.prospects import Claimed, ProspectStore
from app.store.registry import Registry

__all__ = ["Deliverer", "Lot", "TokenRefresher", "failure_reason", "failure_record"]

log = logging.getLogger(__name__)


def store_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis (or the quota store on it) being unreachable for now."""
    cause = exc.__cause__ if isinstance(exc, QuotaUnavailable) else exc
    return cause is not None and unreachable(cause)


class Deliverer:
    """Drains destinations: claims due prospects and routes them to the senders."""

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
        self.gate = gate
        self.settings = settings
        # Without a refresher tokens are read (decrypted) but never refreshed.
        refresher = refresher or TokenManager(
            ConnectionStore(store.redis, store.keys, cipher_for(settings)),
            None,
            margin_s=settings.token_refresh_margin_s,
            wait_s=settings.token_refresh_wait_s,
        )
        self.enrollment = Enrollment(
            store=EnrollStore(store.redis, store.keys),
            caller=Caller(client, gate, fallback_pause_s=settings.rate_limit_fallback_pause_s),
            mailboxes=Mailboxes(store.redis, store.keys),
            failures=store,
            learned=lambda dest: learned_table(store.redis, store.keys, dest),
            settings=settings,
        )
        self.outcomes = Outcomes(
            store=store,
            refresher=refresher,
            settings=settings,
            emails=EmailStore(store.redis, store.keys),
            note=self.enrollment.note,
        )
        self.lots = Lots(
            store=store, registry=registry, refresher=refresher, outcomes=self.outcomes
        )
        permits = Permits(gate)
        self.patch = PatchSender(
            store=store,
            client=client,
            gate=gate,
            permits=permits,
            outcomes=self.outcomes,
            settings=settings,
        )
        calls = Calls(client=client, gate=gate, permits=permits, settings=settings)
        self.resolver = Resolver(
            store=store, calls=calls, settings=settings, note=self._note_created
        )
        self.bulk = BulkSender(
            store=store,
            client=client,
            gate=gate,
            permits=permits,
            outcomes=self.outcomes,
            lots=self.lots,
            fallback=self.patch,
            settings=settings,
        )

    async def drain(
        self, dest_id: str, slot: str | None = None, *, stats: Counter[str] | None = None
    ) -> Counter[str]:
        """Send due prospects of one destination until none is due or the budget is spent.
        ``stats`` (returned) receives each batch's counts as it ends, so a caller still has
        the counts of a drain that raised."""
        stats = Counter() if stats is None else stats
        deadline = time.monotonic() + self.settings.drain_budget_s
        token = uuid.uuid4().hex
        held = 0  # prospects claimed by the batch under way
        looked = False  # whether this drain has looked for emails due yet
        lot: Lot | None = None
        try:
            while time.monotonic() < deadline:
                lot = await self.lots.open(dest_id, token)
                if lot is None:
                    break
                # Emails wait only where the destination matches by email, or were left by
                # an earlier rule: looked for every batch there, else once per drain.
                identity = lot.dest.identity
                if looked and not (identity is not None and identity.by_email):
                    resolved = False
                else:
                    resolved = await self.resolve(lot, stats)
                looked = True
                claimed = await self.store.claim(
                    dest_id,
                    now_ms=now_ms(),
                    lease_ms=self.settings.lease_ms,
                    batch=self.settings.claim_batch,
                    token=token,
                )
                if not claimed:
                    if resolved:
                        continue  # more emails may be due
                    break
                held = len(claimed)
                # Each batch's counts reach the metrics in one round trip when it is done.
                tally: Counter[str] = Counter(claimed=len(claimed))
                try:
                    more = await self.route(lot, claimed, tally)
                finally:
                    stats.update(tally)
                    await self.store.count(dest_id, **drain_metrics(tally))
                held = 0
                if not more:
                    break
            if lot is not None:
                await self.enroll(lot, stats)
        except Exception as exc:
            if not store_outage(exc):
                raise
            # Every Redis call has a deadline (REDIS_SOCKET_TIMEOUT_S), so an outage ends the
            # drain here instead of holding its claims past their lease: they are given up,
            # sent again once the lease ends; the slot expires by itself.
            log.warning(
                "drain of %s stopped: Redis unavailable (%s); the unsettled claims of its "
                "batch of %d prospect(s) are sent again once their lease ends",
                dest_id,
                exc,
                held,
            )
            stats["abandoned"] += held
            slot = None
        finally:
            if slot is not None:
                await self.store.release_slot(dest_id, slot)
        return stats

    async def _note_created(
        self, dest: Destination, token: str, prospect: int, fields: Mapping[str, Any], email: str
    ) -> int:
        return await self.enrollment.note(dest, token, [(prospect, fields)], by_email=email)

    async def resolve(self, lot: Lot, stats: Counter[str]) -> bool:
        """The stage before the senders: emails due for resolution become their prospects'
        pending changes (``app.resolve``); True when some were claimed."""
        tally: Counter[str] = Counter()
        try:
            return await self.resolver.run(lot, tally)
        finally:
            if tally:
                stats.update(tally)
                await self.store.count(lot.dest.id, **drain_metrics(tally))

    async def enroll(self, lot: Lot, stats: Counter[str]) -> None:
        """The enrollment stage, with the drain's last lot: after the senders, so an
        enrollment noted by this drain's deliveries goes out in the same drain, after its
        prospect's fields."""
        sending = Sending(lot.dest, lot.conn, lot.access_token, lot.token)
        await self.enrollment.run(sending, stats)

    async def route(self, lot: Lot, claimed: list[Claimed], stats: Counter[str]) -> bool:
        """One claimed batch's way through the senders; False when the quota ran out (the
        drain should stop). Each stage takes what it can and hands on the rest."""
        rest, more = await self.bulk.send(lot, claimed, stats)
        if not rest:
            return more
        return await self.patch.send(lot, rest, stats) and more

    async def wait_idle(self) -> None:
        """Wait for every bulk batch this process tracks (tests, shutdown)."""
        await self.bulk.wait_idle()
