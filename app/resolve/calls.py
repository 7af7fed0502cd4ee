"""Resolution's requests to Outreach, each on a permit of the shared quota gate, its answer
told to the gate exactly once (as the PATCH sender does)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from app.config.destinations import Connection, Destination
from app.core.errors import Retryable
from app.core.settings import Settings
from app.outreach.answers import Answer, no_answer, parse_answer
from app.outreach.client import OutreachClient, Response
from app.ratelimit.gate import Grant, QuotaGate


class Lot(Protocol):
    """What a drain sends with (``app.delivery.lot.Lot``)."""

    @property
    def dest(self) -> Destination: ...
    @property
    def conn(self) -> Connection: ...
    @property
    def token(self) -> str: ...
    @property
    def access_token(self) -> str | None: ...


class Permits(Protocol):
    """The drain's quota permits (``app.delivery.permits.Permits``, whose lot is the
    drain's own ``Lot``)."""

    async def take(self, lot: Any, want: int) -> Grant: ...


@dataclass(frozen=True, slots=True)
class Sent:
    """One request's end: Outreach's answer (status 0: none came) and its body."""

    answer: Answer
    body: str = ""

    @property
    def status(self) -> int:
        return self.answer.status


@dataclass(frozen=True, slots=True)
class NoPermit:
    """Not sent: the quota has no permit before ``wait_s``."""

    wait_s: float


class Calls:
    def __init__(
        self, *, client: OutreachClient, gate: QuotaGate, permits: Permits, settings: Settings
    ) -> None:
        self.client = client
        self.gate = gate
        self.permits = permits
        self.settings = settings

    @property
    def api_url(self) -> str:
        return self.client.api_url

    async def send(
        self,
        lot: Lot,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Sent | NoPermit:
        """One request on one permit; a transport failure is an answer of status 0."""
        grant = await self.permits.take(lot, 1)
        if not grant.granted:
            return NoPermit(max(grant.wait_s, 0.05))
        user, answered = lot.conn.user, False
        sent_s = time.time()
        try:
            try:
                if lot.access_token is None:
                    raise Retryable(None, f"connection {lot.conn.id} has no access token")
                resp: Response = await self.client.call(
                    lot.access_token, method, url, params=params, body=body
                )
            except Retryable as exc:
                answered = True
                await self.gate.observe(user, no_answer(), sent_s=sent_s, grant=grant.id)
                return Sent(no_answer(), exc.detail or "")
            reply = parse_answer(
                resp.status,
                resp.headers,
                resp.body,
                fallback_pause_s=self.settings.rate_limit_fallback_pause_s,
            )
            answered = True
            await self.gate.observe(user, reply, sent_s=sent_s, grant=grant.id)
            return Sent(reply, resp.body)
        except BaseException:
            if not answered:
                with contextlib.suppress(Exception):  # the original error is the one to see
                    await self.gate.observe(user, no_answer(), sent_s=sent_s, grant=grant.id)
            raise
