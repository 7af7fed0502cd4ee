"""What a drain works on: one destination's claimed batch, and the results of a send that
are not Outreach's answers (no permit, lease lost)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from app.config.destinations import Connection, Destination
from app.connections.oauth import AccessToken, RefreshOutcome
from app.core.errors import Retryable
from app.store.prospects import Claimed


class NoPermit(Retryable):
    """A bisection half not sent: the quota has no permit for it now (not an error)."""


class LeaseLost(Retryable):
    """Not sent: the claim expired while the request waited its turn, and another drain took
    the prospect over (it sends the current value; this snapshot may be stale)."""


class TokenRefresher(Protocol):
    """Access tokens, kept fresh (app/connections/oauth.py ``TokenManager``)."""

    async def current(self, conn_id: str) -> AccessToken | None:
        """The token to send with now (refreshed first when about to expire)."""
        ...

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        """Outreach refused the token of ``generation`` (a 401): refresh it, once."""
        ...


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


def subset(c: Claimed, fields: set[str]) -> Claimed:
    """``c`` with only ``fields``."""
    return replace(c, fields={f: c.fields[f] for f in fields})


def now_ms() -> int:
    """The wall clock in epoch milliseconds (the store's scores)."""
    return int(time.time() * 1000)
