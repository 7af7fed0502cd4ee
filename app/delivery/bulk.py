"""Bulk delivery: a claimed batch's groups of identical changes go by Outreach's Bulk API.

The drain hands every claimed batch to :meth:`BulkSender.send` first. Prospects whose
pending fields are exactly the same values form a group; groups of at least
``bulk.min_group`` go as bulk calls of at most ``bulk.ids_per_call`` ids; the rest is handed
back to the drain, which sends it by PATCH. A bulk call returns a batch Outreach works
through later: a tracker (a task on the worker's event loop) polls it with backoff, each
poll on a permit of the same quota gate, then settles each prospect from its Batch Item.
Anything a batch did not deliver is handed to the PATCH sender by the same claim, so
bad-field isolation and failure records are PATCH's.

The claims stay leased until the batch's deadline (plus ``LEASE_MS``): a newer change that
arrives meanwhile waits in pending and is sent after the settle, as for a PATCH; a worker
killed meanwhile loses nothing, its claims come back when the lease ends (after the next
drain has cancelled the orphaned batch, so it cannot overwrite what is sent next).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar

from app.core.errors import Permanent, RateLimited, Retryable, Unauthorized
from app.core.settings import Settings
from app.delivery.bulk_tuning import (
    BULK_CALL_ATTEMPTS,
    BULK_ITEMS_PAGE,
    BULK_MAX_BATCH_FAILURES,
    BULK_PER_RECORD_OFF_S,
    BULK_PER_RECORD_SHARE,
    BULK_RETRY_BASE_S,
    BULK_RETRY_CAP_S,
)
from app.delivery.grouping import group, mostly_one_group
from app.delivery.lot import Lot, now_ms
from app.delivery.lots import Lots
from app.delivery.outcomes import Outcomes
from app.delivery.permits import Permits
from app.outreach.answers import no_answer
from app.outreach.bulk import (
    BatchItem,
    BulkAnswer,
    BulkBatch,
    BulkClient,
    BulkModification,
    ProspectIds,
    UnexpectedAnswer,
)
from app.outreach.client import OutreachClient
from app.ratelimit.gate import QuotaGate
from app.store import bulk_state as figures
from app.store.bulk_state import BulkState, InFlight
from app.store.counters import count_delivered, drain_metrics
from app.store.prospects import Claimed, ProspectStore, effective_window_ms

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Item states that mean "written" in a batch Outreach stopped early (names undocumented).
DONE = frozenset({"done", "finished", "complete", "completed", "succeeded", "success"})
#: Unreadable answers to polls of one batch before it counts as failed.
MAX_UNEXPECTED = 3


class Fallback(Protocol):
    """Where a batch's undelivered prospects go: the PATCH sender (`app.delivery.patch`)."""

    async def send(self, lot: Lot, claimed: list[Claimed], stats: Counter[str]) -> bool: ...


class Sent(NamedTuple):
    """What the bulk stage hands on: the prospects for PATCH, and whether the quota allows
    more now (False: the destination is held, the drain should stop)."""

    rest: list[Claimed]
    more: bool = True


class _NoPermit(Exception):
    """No permit for a bulk request now, or Outreach paused the user (a 429)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s


class BulkSender:
    """The drain's bulk stage (see the module's docstring)."""

    def __init__(
        self,
        *,
        store: ProspectStore,
        client: OutreachClient,
        gate: QuotaGate,
        permits: Permits,
        outcomes: Outcomes,
        lots: Lots,
        fallback: Fallback,
        settings: Settings,
    ) -> None:
        self.store = store
        self.gate = gate
        self.permits = permits
        self.outcomes = outcomes
        self.lots = lots
        self.fallback = fallback
        self.settings = settings
        self.state = BulkState(store.redis, store.keys)
        self._outreach = client
        self._client: BulkClient | None = None
        self._trackers: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> BulkClient:
        # Made on first use: a drain that never sends by bulk needs no bulk client.
        if self._client is None:
            pause_s = self.settings.rate_limit_fallback_pause_s
            self._client = BulkClient(self._outreach, fallback_pause_s=pause_s)
        return self._client

    async def send(self, lot: Lot, claimed: list[Claimed], stats: Counter[str]) -> Sent:
        """Send a claimed batch's large groups by bulk; the rest is handed on for PATCH (all
        of it when bulk is off for the destination)."""
        await self._cancel_orphans(lot, stats)
        if not lot.dest.bulk.enabled:
            return Sent(claimed)
        if await self.state.off(lot.dest.id, lot.conn.id, now_ms=now_ms()) is not None:
            return Sent(claimed)
        claimed = claimed + await self._claim_more(lot, claimed, stats)
        calls, rest = group(
            claimed, min_group=lot.dest.bulk.min_group, ids_per_call=lot.dest.bulk.ids_per_call
        )
        for n, (fields, members) in enumerate(calls):
            if await self.state.off(lot.dest.id, lot.conn.id, now_ms=now_ms()) is not None:
                rest += members  # refused by an earlier call of this batch
                continue
            try:
                rest += await self._start(lot, fields, members, stats)
            except _NoPermit as no:
                # The quota has no room now: the groups wait for it (the destination held),
                # grouped again when it frees; one PATCH each would cost far more.
                await self._defer(lot, [c for _, m in calls[n + 1 :] for c in m], no, stats)
                return Sent(rest, more=False)
        return Sent(rest)

    async def wait_idle(self) -> None:
        """Wait for every batch this process tracks (tests, shutdown)."""
        while self._trackers:
            await asyncio.gather(*list(self._trackers), return_exceptions=True)

    async def _claim_more(
        self, lot: Lot, claimed: list[Claimed], stats: Counter[str]
    ) -> list[Claimed]:
        """A full claim means a backlog: take enough of it to fill bulk calls."""
        have = len(claimed)
        settings = self.settings
        want = lot.dest.bulk.ids_per_call * 4 - have
        if have < settings.claim_batch or want <= 0:
            return []
        # Only a backlog of identical changes is worth more: claiming more of one that does
        # not group would only defer what PATCH's permits cannot cover now.
        if not mostly_one_group(claimed):
            return []
        more = await self.store.claim(
            lot.dest.id, now_ms=now_ms(), lease_ms=settings.lease_ms, batch=want, token=lot.token
        )
        stats["claimed"] += len(more)
        return more

    # One bulk call ------------------------------------------------------------------------

    async def _start(
        self, lot: Lot, fields: dict[str, Any], members: list[Claimed], stats: Counter[str]
    ) -> list[Claimed]:
        """Send one bulk call and hand its batch to a tracker; returns the prospects that
        must go by PATCH instead (the call was refused or could not be sent)."""
        bulk = lot.dest.bulk
        deadline = now_ms() + int(bulk.timeout_s * 1000)
        renewed = await self.store.renew_many(
            lot.dest.id,
            [c.prospect for c in members],
            lot.token,
            until_ms=deadline + self.settings.lease_ms,
        )
        members = [c for c in members if c.prospect in renewed]
        if not members:
            return []
        # Outreach's figure before the call (None on a cold gate or in a new window: the call
        # then goes unmeasured, and the next one tells what bulk costs).
        before = await self._server_remaining(lot)
        mod = BulkModification(ProspectIds(c.prospect for c in members), fields)
        try:
            answer = await self._retrying(lot, stats, lambda token: self.client.modify(token, mod))
            if isinstance(answer.error, RateLimited):
                stats["bulk_error_ratelimited"] += 1
                raise _NoPermit(answer.error.reset_s - time.time())
        except _NoPermit as no:
            await self._defer(lot, members, no, stats)
            raise
        except Unauthorized:
            return members  # the PATCH path refreshes the token
        except Retryable as exc:
            await self._failed(lot, f"bulk call not answered: {exc.detail}")
            return members
        if answer.value is None:
            await self._refused(lot, answer, stats)
            return members
        batch = answer.value
        # Recorded before anything else: a worker killed from here on leaves a batch the next
        # drain cancels. Only a kill between Outreach's answer and this write leaves one that
        # nobody can cancel (Outreach takes no key of ours to find it by).
        await self.state.track(lot.dest.id, InFlight(batch.id, lot.conn.id, deadline))
        await self._charged(lot, before, answer, len(members))
        await self.state.add(lot.dest.id, **{figures.CALLS: 1, figures.RECORDS: len(members)})
        stats["bulk_calls"] += 1
        stats["bulk_records"] += len(members)
        task = asyncio.get_running_loop().create_task(self._track(lot, batch.id, members, deadline))
        self._trackers.add(task)
        task.add_done_callback(self._trackers.discard)
        return []

    async def _server_remaining(self, lot: Lot) -> int | None:
        try:
            state = await self.gate.state(lot.conn.user, limit=lot.conn.rate_limit)
        except Exception:  # only a figure for the status page: never stop a delivery for it
            return None
        return state.server_remaining

    async def _charged(self, lot: Lot, before: int | None, answer: BulkAnswer[Any], n: int) -> None:
        """What the call cost of the quota, by Outreach's own figure before and after it.
        Outreach charging bulk per record makes it no cheaper than PATCH: bulk goes off for
        the connection (this call's records are paid for and still settle)."""
        raw = {k.lower(): v for k, v in answer.response.headers.items()}.get(
            "x-ratelimit-remaining"
        )
        after = int(raw) if raw is not None and raw.isdigit() else None
        charged = 1 if before is None or after is None else max(1, before - after)
        await self.state.add(lot.dest.id, **{figures.CHARGED: charged})
        # Outreach never reports below 0: a call that overdrew the window shows at most what
        # was left, so the charge is judged against what could be seen.
        visible = 0 if before is None else min(n, before)
        if visible >= 10 and charged >= visible * BULK_PER_RECORD_SHARE:
            reason = f"Outreach charged {charged} requests for a bulk call of {n} records"
            until = now_ms() + int(BULK_PER_RECORD_OFF_S * 1000)
            await self._turn_off(lot, "connection", reason, until)

    # Tracking a batch ---------------------------------------------------------------------

    async def _track(self, lot: Lot, batch_id: int, members: list[Claimed], deadline: int) -> None:
        stats: Counter[str] = Counter()
        try:
            batch, lot, excused = await self._follow(lot, batch_id, deadline, stats)
            if await self.state.untrack(lot.dest.id, batch_id):
                await self._settle(lot, batch_id, batch, members, stats, excused=excused)
        except Exception:
            # Nothing is lost: the claims come back to pending when their lease ends.
            log.exception("tracking bulk batch %s of %s failed", batch_id, lot.dest.id)
        finally:
            with contextlib.suppress(Exception):
                await self._write_stats(lot, stats)

    async def _follow(
        self, lot: Lot, batch_id: int, deadline: int, stats: Counter[str]
    ) -> tuple[BulkBatch | None, Lot, bool]:
        """Poll until the batch ends (None: stuck past its deadline, or unreadable; it is
        cancelled then). The flag says whether the quota, a pause or an expired token kept
        a poll from being answered: not finishing then is no fault of the batch."""
        bulk = lot.dest.bulk
        wait_s, unexpected, excused = bulk.poll_first_s, 0, False
        while True:
            left_s = (deadline - now_ms()) / 1000
            if left_s <= 0:
                break
            await asyncio.sleep(min(wait_s, left_s))
            wait_s = min(wait_s * 2, bulk.poll_max_s)
            try:
                answer = await self._call(lot, stats, lambda t: self.client.batch(t, batch_id))
            except _NoPermit as no:
                wait_s, excused = max(no.wait_s, 0.05), True
                continue
            except Retryable:
                continue
            except Unauthorized:
                lot, excused = await self._fresh(lot) or lot, True
                continue
            if answer.value is not None:
                if answer.value.finished or answer.value.canceled:
                    return answer.value, lot, False  # seen to end: whatever it did is its own
                continue
            if isinstance(answer.error, Unauthorized):
                lot, excused = await self._fresh(lot) or lot, True
            elif isinstance(answer.error, RateLimited):
                excused = True
            elif isinstance(answer.error, UnexpectedAnswer):
                unexpected += 1
                if unexpected >= MAX_UNEXPECTED:
                    break
        stats["bulk_stuck"] += 1
        await self._cancel(lot, batch_id, stats)
        return None, lot, excused

    async def _settle(
        self,
        lot: Lot,
        batch_id: int,
        batch: BulkBatch | None,
        members: list[Claimed],
        stats: Counter[str],
        *,
        excused: bool = False,
    ) -> None:
        """Each prospect from its item: delivered, or sent again by PATCH. A batch that did
        not finish counts toward turning bulk off unless ``excused`` (see ``_follow``)."""
        complete = batch is not None and batch.finished and not batch.pending
        if complete and batch is not None and not batch.failures:
            done = {c.prospect for c in members}
            items: dict[int, BatchItem] = {}
        else:
            items = await self._items(lot, batch_id, stats)
            done = {
                p
                for p, item in items.items()
                if not item.failed and (complete or item.state.lower() in DONE)
            }
        delivered = [c for c in members if c.prospect in done]
        again = [c for c in members if c.prospect not in done]
        for c in again:
            item = items.get(c.prospect)
            if item is not None and item.failed:
                stats["bulk_item_failed"] += 1
                log.warning(
                    "bulk record failed, sending it by PATCH: destination=%s batch=%s info=%s",
                    lot.dest.id,
                    batch_id,
                    (item.info or "")[:200],
                )
        await self._delivered(lot, delivered, stats)
        if complete and batch is not None and not batch.canceled:
            await self.state.batch_succeeded(lot.dest.id)
        else:
            stats["bulk_fallback"] += 1
            if not excused:
                await self._failed(lot, f"batch {batch_id} did not finish (cancelled or stuck)")
        if again:
            await self._patch(lot, again, stats)

    async def _items(self, lot: Lot, batch_id: int, stats: Counter[str]) -> dict[int, BatchItem]:
        """Every item of the batch by prospect ({} when they cannot be read: all go by PATCH)."""
        out: dict[int, BatchItem] = {}
        url: str | None = None
        while True:
            try:
                page = partial(self.client.items, batch_id=batch_id, page_size=BULK_ITEMS_PAGE)
                answer = await self._retrying(lot, stats, partial(page, url=url), wait=True)
            except (Retryable, Unauthorized, _NoPermit):
                return {}
            if answer.value is None:
                return {}
            out.update((item.prospect, item) for item in answer.value.items)
            url = answer.value.next_url
            if url is None:
                return out

    async def _delivered(self, lot: Lot, delivered: list[Claimed], stats: Counter[str]) -> None:
        await self.outcomes.note_delivered(lot, delivered)
        settled = await self.store.settle_delivered(
            lot.dest.id,
            [c.prospect for c in delivered],
            lot.token,
            now_ms=now_ms(),
            window_ms=effective_window_ms(lot.dest, self.settings.coalesce_window_ms),
        )
        for c in delivered:
            if c.prospect in settled:
                stats["delivered"] += 1
                count_delivered(stats, lot.dest, c.fields)
            else:
                stats["duplicates"] += 1
        stats["bulk_delivered"] += len(settled)
        await self.state.add(lot.dest.id, **{figures.DELIVERED: len(settled)})

    async def _patch(self, lot: Lot, again: list[Claimed], stats: Counter[str]) -> None:
        """What a batch did not deliver goes by PATCH, on the same claims (what the quota does
        not allow now returns to pending)."""
        fresh = await self._fresh(lot)
        if fresh is None:
            for c in again:
                await self.outcomes.settle(lot, c, "defer", due_ms=now_ms())
            return
        for start in range(0, len(again), self.settings.claim_batch):
            part = again[start : start + self.settings.claim_batch]
            # Renewed to a PATCH's lease: the bulk lease may be far longer than needed now.
            until = now_ms() + self.settings.lease_ms
            await self.store.renew_many(
                lot.dest.id, [c.prospect for c in part], lot.token, until_ms=until
            )
            await self.fallback.send(fresh, part, stats)

    async def _fresh(self, lot: Lot) -> Lot | None:
        """The lot again (a refreshed token), with the same claim token."""
        return await self.lots.open(lot.dest.id, lot.token)

    async def _cancel(self, lot: Lot, batch_id: int, stats: Counter[str]) -> bool:
        try:
            answer = await self._retrying(
                lot, stats, lambda t: self.client.cancel(t, batch_id), wait=True
            )
        except (Retryable, Unauthorized, _NoPermit):
            return False
        return answer.value is not None

    async def _cancel_orphans(self, lot: Lot, stats: Counter[str]) -> None:
        """Cancel batches whose tracker died (their worker was killed) before their claims
        come back and are sent again: a late batch must not overwrite newer values."""
        now = now_ms()
        for flight in await self.state.in_flight(lot.dest.id):
            if flight.deadline_ms > now:
                continue  # its tracker still follows it (or cancels it at the deadline)
            if await self._cancel(lot, flight.batch_id, stats):
                await self.state.untrack(lot.dest.id, flight.batch_id)
                stats["bulk_orphans_cancelled"] += 1

    # Quota and refusals -------------------------------------------------------------------

    async def _retrying(
        self,
        lot: Lot,
        stats: Counter[str],
        send: Callable[[str], Awaitable[BulkAnswer[T]]],
        *,
        wait: bool = False,
    ) -> BulkAnswer[T]:
        """``_call``, sent again with backoff while it fails transiently (a 5xx, a timeout, a
        dropped connection); the last failure once ``BULK_CALL_ATTEMPTS`` are spent: raised
        when there was no answer, else returned."""
        for attempt in range(1, BULK_CALL_ATTEMPTS + 1):
            try:
                answer = await self._call(lot, stats, send, wait=wait)
            except Retryable:
                if attempt == BULK_CALL_ATTEMPTS:
                    raise
            else:
                if not isinstance(answer.error, Retryable) or attempt == BULK_CALL_ATTEMPTS:
                    return answer
            stats["bulk_retries"] += 1
            await asyncio.sleep(min(BULK_RETRY_BASE_S * 2 ** (attempt - 1), BULK_RETRY_CAP_S))
        raise AssertionError("unreachable")  # the last attempt returned or raised

    async def _defer(
        self, lot: Lot, members: list[Claimed], no: _NoPermit, stats: Counter[str]
    ) -> None:
        """No permit for a bulk call now: its members go back to pending, due when the quota
        frees, and the destination is held until then (as PATCH does without a permit)."""
        if not members:
            return
        now = now_ms()
        due = now + int(max(no.wait_s, 0.05) * 1000)
        await self.store.hold(lot.dest.id, due, now_ms=now)
        for c in members:
            await self.outcomes.settle(lot, c, "defer", due_ms=due)
        stats["deferred"] += len(members)

    async def _call(
        self,
        lot: Lot,
        stats: Counter[str],
        send: Callable[[str], Awaitable[BulkAnswer[T]]],
        *,
        wait: bool = False,
    ) -> BulkAnswer[T]:
        """One bulk request on a permit of the shared gate, its answer reported to the gate.
        Without a permit: ``_NoPermit`` (or, with ``wait``, wait for one up to a minute)."""
        deadline = time.monotonic() + 60.0
        grant = await self.permits.take(lot, 1)
        while not grant.granted:
            if not wait or time.monotonic() + grant.wait_s > deadline:
                raise _NoPermit(grant.wait_s)
            await asyncio.sleep(max(grant.wait_s, 0.05))
            grant = await self.permits.take(lot, 1)
        stats["requests"] += 1
        stats["bulk_requests"] += 1
        await self.state.add(lot.dest.id, **{figures.REQUESTS: 1})
        user, sent_s = lot.conn.user, time.time()
        try:
            if lot.access_token is None:
                raise Unauthorized(None, f"connection {lot.conn.id} has no access token")
            answer = await send(lot.access_token)
        except (Retryable, Unauthorized):
            await self.gate.observe(user, no_answer(), sent_s=sent_s, grant=grant.id)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await self.gate.observe(user, no_answer(), sent_s=sent_s, grant=grant.id)
            raise
        await self.gate.observe(user, answer.reply, sent_s=sent_s, grant=grant.id)
        return answer

    async def _refused(self, lot: Lot, answer: BulkAnswer[Any], stats: Counter[str]) -> None:
        err = answer.error
        stats[f"bulk_error_{type(err).__name__.lower()}"] += 1
        if isinstance(err, RateLimited | Unauthorized):
            return  # the gate is paused, or the PATCH path refreshes the token
        if isinstance(err, Permanent) and err.status == 403:
            until = now_ms() + int(lot.dest.bulk.off_s * 1000)
            reason = f"Outreach refused bulk (403, missing batches scopes?): {err.detail}"
            await self._turn_off(lot, "connection", reason[:300], until)
        elif isinstance(err, Permanent) and err.status == 404:
            until = now_ms() + int(lot.dest.bulk.off_s * 1000)
            await self._turn_off(
                lot, "destination", f"bulk action unknown (404): {err.detail}", until
            )
        else:
            await self._failed(lot, f"bulk call refused: {err}")

    async def _failed(self, lot: Lot, reason: str) -> None:
        """A batch that failed; several in a row turn bulk off for the destination."""
        if await self.state.batch_failed(lot.dest.id) >= BULK_MAX_BATCH_FAILURES:
            until = now_ms() + int(lot.dest.bulk.off_s * 1000)
            await self._turn_off(
                lot, "destination", f"repeated batch failures; last: {reason}", until
            )
            await self.state.batch_succeeded(lot.dest.id)

    async def _turn_off(self, lot: Lot, scope: str, reason: str, until_ms: int) -> None:
        keys = self.store.keys
        key = (
            keys.bulk_connection(lot.conn.id)
            if scope == "connection"
            else keys.bulk_state(lot.dest.id)
        )
        if await self.state.turn_off(key, reason, until_ms=until_ms):
            log.error(
                "bulk delivery off for %s %s until %d: %s",
                scope,
                lot.conn.id if scope == "connection" else lot.dest.id,
                until_ms,
                reason,
            )

    async def _write_stats(self, lot: Lot, stats: Counter[str]) -> None:
        if stats:
            await self.store.count(lot.dest.id, **drain_metrics(stats))
