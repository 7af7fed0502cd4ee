"""Opening a lot: what a drain's claims are sent with, read afresh (a token may have been
refreshed, the destination disabled or deleted meanwhile)."""

from __future__ import annotations

import logging

from app.delivery.lot import Lot, TokenRefresher
from app.delivery.outcomes import Outcomes
from app.store.prospects import ProspectStore
from app.store.registry import Registry

log = logging.getLogger(__name__)


class Lots:
    """Reads a destination, its connection and an access token for a claim token."""

    def __init__(
        self,
        *,
        store: ProspectStore,
        registry: Registry,
        refresher: TokenRefresher,
        outcomes: Outcomes,
    ) -> None:
        self.store = store
        self.registry = registry
        self.refresher = refresher
        self.outcomes = outcomes

    async def open(self, dest_id: str, token: str) -> Lot | None:
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
