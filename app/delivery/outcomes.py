"""What happens to a claimed prospect after its send: settled, retried, deferred or failed."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from app.connections.oauth import RefreshOutcome
from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.core.settings import Settings
from app.delivery.lot import LeaseLost, Lot, TokenRefresher, now_ms, subset
from app.store.counters import count_failed, mapping_id_of
from app.store.prospects import Claimed, Outcome, ProspectStore

log = logging.getLogger(__name__)

#: Backoff of a transient failure: base * 2**attempts, capped, with jitter.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0
#: A prospect refused with a 401 is sent again at once after a refresh this many times;
#: after that its 401s are retried with backoff (a token Outreach refuses even fresh).
REFRESH_RETRIES = 2
ATTRIBUTE_POINTER = "/data/attributes/"

#: Sends halves of a PATCH refused without naming a field (`app.delivery.bisection`).
Bisect = Callable[[Lot, Claimed, Counter[str]], Awaitable[None]]


def backoff_s(
    attempts: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
    rng: random.Random | None = None,
) -> float:
    raw = min(cap_s, base_s * 2.0 ** min(attempts, 20))
    return raw * (0.5 + 0.5 * (rng or random).random())


async def failure_record(
    store: ProspectStore, dest: str, c: Claimed, err: DeliveryError, reason: str
) -> dict[str, Any]:
    """The dead letter of a claimed prospect's fields: what, why, and how to replay it."""
    at_ms = now_ms()
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


def named_fields(err: Permanent) -> set[str]:
    """The attributes Outreach's error pointers name (``/data/attributes/custom4``)."""
    return {p.rsplit("/", 1)[-1] for p in err.pointers if p.startswith(ATTRIBUTE_POINTER)}


def needs_bisection(c: Claimed, err: Permanent) -> bool:
    """Outreach refused a PATCH of several fields as a bad request without naming any."""
    return not named_fields(err) and len(c.fields) > 1 and err.status in (400, 422)


class Outcomes:
    """Settles claimed prospects in the store after their send, and writes dead letters."""

    def __init__(
        self, *, store: ProspectStore, refresher: TokenRefresher, settings: Settings
    ) -> None:
        self.store = store
        self.refresher = refresher
        self.settings = settings

    async def apply(
        self,
        lot: Lot,
        c: Claimed,
        err: DeliveryError | None,
        stats: Counter[str],
        *,
        bisect: Bisect | None = None,
    ) -> None:
        """Settle ``c`` after Outreach's answer ``err`` (None: it took the fields). A
        refusal of several fields as a bad request that names none goes to ``bisect``."""
        if err is None:
            stats["delivered"] += 1
            if not await self.settle(lot, c, "ok", fields=tuple(c.fields)):
                stats["duplicates"] += 1
            return
        if isinstance(err, LeaseLost):
            stats["lease_lost"] += 1  # the drain that took it over settles it
            return
        stats[f"error_{type(err).__name__.lower()}"] += 1
        if isinstance(err, RateLimited):
            due = int(err.reset_s * 1000)
            await self.store.hold(lot.dest.id, due, now_ms=now_ms())
            await self.settle(lot, c, "defer", due_ms=due)
        elif isinstance(err, Permanent) and bisect is not None and needs_bisection(c, err):
            await bisect(lot, c, stats)
        elif isinstance(err, Permanent):
            await self.permanent(lot, c, err, stats)
        elif isinstance(err, Unauthorized) and await self.unauthorized(lot, c):
            return
        else:
            await self.retry(lot, c, err)

    async def hold_blocked(self, dest_id: str, why: str) -> int:
        """Start no drain of ``dest_id`` for a while: it is disabled, or its connection cannot
        send (needs re-authorization, has no token yet, its refresh failed, or it is unknown).
        Returns the hold's end."""
        now = now_ms()
        until = now + int(self.settings.reauth_hold_s * 1000)
        await self.store.hold(dest_id, until, now_ms=now)
        log.debug("destination %s held: connection blocked (%s)", dest_id, why)
        return until

    async def retry(self, lot: Lot, c: Claimed, err: DeliveryError) -> None:
        """A transient failure: send again after a backoff, or record it as failed once the
        prospect has been failing for ``MAX_RETRY_AGE_S``. The age runs from its first failed
        attempt (time spent waiting for quota or while disabled does not count), and time the
        destination spent paused for re-authorization does not count either."""
        now = now_ms()
        since = c.failing_since_ms or now
        if (now - max(since, lot.resumed_ms)) / 1000 > self.settings.max_retry_age_s:
            await self.fail(lot, c, err)
            return
        after = err.after_s if isinstance(err, Retryable) and err.after_s else None
        settings = self.settings
        backoff = backoff_s(
            c.attempts, base_s=settings.retry_backoff_base_s, cap_s=settings.retry_backoff_cap_s
        )
        delay = max(after or 0.0, backoff)
        await self.settle(lot, c, "retry", due_ms=now + int(delay * 1000))

    async def unauthorized(self, lot: Lot, c: Claimed) -> bool:
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
            await self.settle(lot, c, "retry", due_ms=now_ms())
            return True
        if outcome in (RefreshOutcome.REAUTH_REQUIRED, RefreshOutcome.UNAVAILABLE):
            until = await self.hold_blocked(lot.dest.id, outcome.value)
            await self.settle(lot, c, "defer", due_ms=until)
            return True
        return False

    async def permanent(self, lot: Lot, c: Claimed, err: Permanent, stats: Counter[str]) -> None:
        """Fail what Outreach refused; when it named the bad fields, only those."""
        bad = named_fields(err) & set(c.fields)
        await self.note_invalid(lot, bad, err)
        if not bad or bad == set(c.fields):
            await self.fail(lot, c, err)
            return
        stats["fields_isolated"] += len(bad)
        await self.record(lot, subset(c, bad), err, failure_reason(err))
        # The other fields go back to pending and are sent again at once.
        await self.settle(lot, c, "defer", due_ms=now_ms(), fields=tuple(bad))

    async def note_invalid(self, lot: Lot, bad: set[str], err: Permanent) -> None:
        """A 400 on a custom field: its mapping ID is unusable for the account."""
        if err.status != 400:
            return
        for mapping_id in filter(None, map(mapping_id_of, bad)):
            if await self.store.mark_invalid_mapping(lot.dest.id, mapping_id):
                log.error("destination %s: mapping ID %d refused", lot.dest.id, mapping_id)

    async def strip_invalid(
        self, lot: Lot, c: Claimed, invalid: set[int], stats: Counter[str]
    ) -> Claimed | None:
        """Fields of mapping IDs known to be unusable are failed without a request."""
        bad = {f for f in c.fields if mapping_id_of(f) in invalid}
        if not bad:
            return c
        stats["fields_invalid_mapping"] += len(bad)
        refusal = Permanent(None, "mapping ID marked invalid after Outreach refused its field")
        await self.record(lot, subset(c, bad), refusal, "invalid_mapping")
        if bad == set(c.fields):
            await self.settle(lot, c, "drop")
            return None
        await self.store.drop_inflight(lot.dest.id, c.prospect, bad)
        return subset(c, set(c.fields) - bad)

    async def fail(self, lot: Lot, c: Claimed, err: DeliveryError) -> None:
        """Record ``c``'s fields as a dead letter and drop the claim."""
        await self.record(lot, c, err, failure_reason(err))
        await self.settle(lot, c, "drop")

    async def record(self, lot: Lot, c: Claimed, err: DeliveryError, reason: str) -> None:
        """Write the dead letter of ``c``'s fields and count it."""
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

    async def settle(
        self,
        lot: Lot,
        c: Claimed,
        outcome: Outcome,
        *,
        due_ms: int = 0,
        fields: tuple[str, ...] = (),
    ) -> bool:
        """End ``c``'s claim with ``outcome`` (see `ProspectStore.settle`)."""
        window = lot.dest.coalesce_window_ms
        return await self.store.settle(
            lot.dest.id,
            c.prospect,
            lot.token,
            outcome,
            now_ms=now_ms(),
            window_ms=self.settings.coalesce_window_ms if window is None else window,
            due_ms=due_ms,
            fields=fields,
        )
