"""What happens to a claimed prospect after its send: settled, retried, deferred or failed."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.config.destinations import Destination
from app.connections.oauth import RefreshOutcome
from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.core.settings import Settings
from app.delivery.lot import LeaseLost, Lot, TokenRefresher, now_ms, subset
from app.resolve.emails import EmailStore
from app.store.counters import count_failed, mapping_id_of
from app.store.prospects import Claimed, Outcome, effective_window_ms

log = logging.getLogger(__name__)

#: Backoff of a transient failure: base * 2**attempts, capped, with jitter (the settings'
#: RETRY_BACKOFF_BASE_S / _CAP_S); MAX_RETRY_AGE_S failing makes it a dead letter.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0
MAX_RETRY_AGE_S = 24 * 3600.0
#: A prospect refused with a 401 is sent again at once after a refresh this many times;
#: after that its 401s are retried with backoff (a token Outreach refuses even fresh).
REFRESH_RETRIES = 2
ATTRIBUTE_POINTER = "/data/attributes/"

#: Sends halves of a PATCH refused without naming a field (`app.delivery.bisection`).
Bisect = Callable[[Lot, Claimed, Counter[str]], Awaitable[None]]
#: Notes what delivered fields call for before their claims are settled (sequence
#: enrollment, `app.enroll.Enrollment.note`): destination, claim token, (prospect, fields).
NoteDelivered = Callable[
    [Destination, str, Sequence[tuple[int, Mapping[str, Any]]]], Awaitable[int]
]


class OutcomeStore(Protocol):
    """What settling needs of the coalescing store (`app.store.prospects.ProspectStore`)."""

    async def settle(
        self,
        dest: str,
        prospect: int,
        token: str,
        outcome: Outcome,
        *,
        now_ms: int,
        window_ms: int,
        due_ms: int = 0,
        fields: Iterable[str] = (),
    ) -> bool: ...

    async def hold(self, dest: str, until_ms: int, *, now_ms: int) -> None: ...

    async def count(self, dest: str, **increments: int) -> None: ...

    async def failed_versions(
        self, dest: str, prospect: int, fields: list[str]
    ) -> dict[str, int]: ...

    async def mark_invalid_mapping(self, dest: str, mapping_id: int) -> bool: ...

    async def forget_delivered(self, dest: str, prospect: int, fields: Iterable[str]) -> None: ...

    async def drop_inflight(self, dest: str, prospect: int, fields: Iterable[str]) -> None: ...

    async def record_failure(self, dest: str, failure_id: str, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a transient failure is sent again, and when it has failed for too long.

    The backoff is ``base_s * 2**attempts`` capped at ``cap_s``, times a jitter of 50-100%
    (``jitter`` returns 0..1), so that prospects failing together do not retry together.
    """

    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    max_age_s: float = MAX_RETRY_AGE_S
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, jitter: Callable[[], float] = random.random
    ) -> RetryPolicy:
        """The policy of ``RETRY_BACKOFF_BASE_S``, ``RETRY_BACKOFF_CAP_S``, ``MAX_RETRY_AGE_S``."""
        return cls(
            base_s=settings.retry_backoff_base_s,
            cap_s=settings.retry_backoff_cap_s,
            max_age_s=settings.max_retry_age_s,
            jitter=jitter,
        )

    def backoff_s(self, attempts: int) -> float:
        """The pause after the ``attempts``-th failed attempt (0: the first)."""
        raw = min(self.cap_s, self.base_s * 2.0 ** min(attempts, 20))
        return raw * (0.5 + 0.5 * self.jitter())

    def exhausted(self, *, now_ms: int, failing_since_ms: int, resumed_ms: int = 0) -> bool:
        """The prospect has been failing longer than ``max_age_s``: record it as failed. The
        age runs from its first failed attempt (0: this one), and no earlier than the
        connection's last (re)installation ``resumed_ms``."""
        since = max(failing_since_ms or now_ms, resumed_ms)
        return (now_ms - since) / 1000 > self.max_age_s

    def retry_at_ms(self, *, now_ms: int, attempts: int, after_s: float | None = None) -> int:
        """When to send again: after the backoff, and no earlier than Outreach's ``after_s``."""
        return now_ms + int(max(after_s or 0.0, self.backoff_s(attempts)) * 1000)


async def failure_record(
    store: OutcomeStore,
    dest: str,
    c: Claimed,
    err: DeliveryError,
    reason: str,
    *,
    at_ms: int | None = None,
) -> dict[str, Any]:
    """The dead letter of a claimed prospect's fields: what, why, and how to replay it."""
    at_ms = now_ms() if at_ms is None else at_ms
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
        self,
        *,
        store: OutcomeStore,
        refresher: TokenRefresher,
        settings: Settings,
        policy: RetryPolicy | None = None,
        clock_ms: Callable[[], int] = now_ms,
        emails: EmailStore | None = None,
        note: NoteDelivered | None = None,
    ) -> None:
        self.store = store
        #: Where a prospect resolved from an email is found to be gone (404) resolves again.
        self.emails = emails
        self.note = note
        self.refresher = refresher
        self.settings = settings
        self.policy = policy or RetryPolicy.from_settings(settings)
        self.clock_ms = clock_ms

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
            await self.note_delivered(lot, [c])
            if not await self.settle(lot, c, "ok", fields=tuple(c.fields)):
                stats["duplicates"] += 1
            return
        if isinstance(err, LeaseLost):
            stats["lease_lost"] += 1  # the drain that took it over settles it
            return
        stats[f"error_{type(err).__name__.lower()}"] += 1
        if isinstance(err, RateLimited):
            due = int(err.reset_s * 1000)
            await self.store.hold(lot.dest.id, due, now_ms=self.clock_ms())
            await self.settle(lot, c, "defer", due_ms=due)
        elif isinstance(err, Permanent) and bisect is not None and needs_bisection(c, err):
            await bisect(lot, c, stats)
        elif isinstance(err, Permanent):
            await self.permanent(lot, c, err, stats)
        elif isinstance(err, Unauthorized) and await self.unauthorized(lot, c):
            return
        else:
            await self.retry(lot, c, err)

    async def note_delivered(self, lot: Lot, delivered: Sequence[Claimed]) -> None:
        """Before settling delivered claims: what their fields call for beyond the prospect
        (an enrollment when an audience field says the prospect entered), noted only while
        the claims are still ours, so it follows the order the fields were delivered in."""
        if self.note is not None and lot.dest.sequencing.enabled:
            await self.note(lot.dest, lot.token, [(c.prospect, c.fields) for c in delivered])

    async def hold_blocked(self, dest_id: str, why: str) -> int:
        """Start no drain of ``dest_id`` for a while: it is disabled, or its connection cannot
        send (needs re-authorization, has no token yet, its refresh failed, or it is unknown).
        Returns the hold's end."""
        now = self.clock_ms()
        until = now + int(self.settings.reauth_hold_s * 1000)
        await self.store.hold(dest_id, until, now_ms=now)
        log.debug("destination %s held: connection blocked (%s)", dest_id, why)
        return until

    async def retry(self, lot: Lot, c: Claimed, err: DeliveryError) -> None:
        """A transient failure: send again after a backoff, or record it as failed once the
        prospect has been failing for ``MAX_RETRY_AGE_S``. The age runs from its first failed
        attempt (time spent waiting for quota or while disabled does not count), and time the
        destination spent paused for re-authorization does not count either."""
        now = self.clock_ms()
        exhausted = self.policy.exhausted(
            now_ms=now, failing_since_ms=c.failing_since_ms, resumed_ms=lot.resumed_ms
        )
        if exhausted:
            await self.fail(lot, c, err)
            return
        after = err.after_s if isinstance(err, Retryable) else None
        due = self.policy.retry_at_ms(now_ms=now, attempts=c.attempts, after_s=after)
        await self.settle(lot, c, "retry", due_ms=due)

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
            await self.settle(lot, c, "retry", due_ms=self.clock_ms())
            return True
        if outcome in (RefreshOutcome.REAUTH_REQUIRED, RefreshOutcome.UNAVAILABLE):
            until = await self.hold_blocked(lot.dest.id, outcome.value)
            await self.settle(lot, c, "defer", due_ms=until)
            return True
        return False

    async def permanent(self, lot: Lot, c: Claimed, err: Permanent, stats: Counter[str]) -> None:
        """Fail what Outreach refused; when it named the bad fields, only those."""
        if err.status == 404 and await self.resolve_again(lot, c, stats):
            return
        bad = named_fields(err) & set(c.fields)
        await self.note_invalid(lot, bad, err)
        if not bad or bad == set(c.fields):
            await self.fail(lot, c, err)
            return
        stats["fields_isolated"] += len(bad)
        await self.record(lot, subset(c, bad), err, failure_reason(err))
        # The other fields go back to pending and are sent again at once.
        await self.settle(lot, c, "defer", due_ms=self.clock_ms(), fields=tuple(bad))

    async def resolve_again(self, lot: Lot, c: Claimed, stats: Counter[str]) -> bool:
        """A prospect resolved from an email is gone (404): forget what the email was
        resolved to and put the fields back under the email, to be resolved once more.
        False when the prospect was not resolved from an email (a plain failure)."""
        if self.emails is None:
            return False
        email = await self.emails.email_of(lot.dest.id, c.prospect)
        if email is None:
            return False
        # Unlinked first: should the email resolve to this id again, its 404 is a failure.
        await self.emails.unlink(lot.dest.id, c.prospect, email)
        versions = await self.store.failed_versions(lot.dest.id, c.prospect, list(c.fields))
        await self.emails.wait_again(lot.dest.id, email, c.fields, versions, now_ms=self.clock_ms())
        await self.settle(lot, c, "drop")
        stats["resolve_gone"] += 1
        return True

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
        record = await failure_record(
            self.store, lot.dest.id, c, err, reason, at_ms=self.clock_ms()
        )
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
        return await self.store.settle(
            lot.dest.id,
            c.prospect,
            lot.token,
            outcome,
            now_ms=self.clock_ms(),
            window_ms=effective_window_ms(lot.dest, self.settings.coalesce_window_ms),
            due_ms=due_ms,
            fields=fields,
        )
