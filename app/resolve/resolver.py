"""The resolve stage of a drain: claim the emails due, find their prospects (cache, then one
lookup per batch), create the missing ones at most once, and move each email's changes into
its prospects' pending changes by version, where the senders take them as any other.

A create is a small state machine in Redis (STYLE 17): the intent is recorded before the
POST; an outcome not known (timeout, 5xx, dropped answer, killed worker) leaves it on record,
and the next attempt looks the email up, bypassing the cache, before it may create again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from app.config.destinations import Destination, Identity
from app.core.settings import Settings
from app.outreach.payload import prospect_create_bytes
from app.resolve.calls import Calls, Lot, NoPermit, Sent
from app.resolve.decide import Decision, decide
from app.resolve.emails import EmailStore, IntentState, Waiting
from app.resolve.lookup import look_up
from app.store.counters import count_delivered, count_failed, mapping_id_of
from app.store.prospects import ProspectStore

log = logging.getLogger(__name__)

#: Outreach's answer to a create whose email a prospect already has.
TAKEN = "has already been taken"


#: Notes what a create's fields call for beyond the new prospect (sequence enrollment,
#: ``app.enroll.Enrollment.note``) while the email's claim is ``token``'s: destination,
#: token, the new prospect and its fields, the email it was created for.
NoteCreated = Callable[[Destination, str, int, Mapping[str, Any], str], Awaitable[int]]


class Resolver:
    """Resolves one destination's due emails; the drain runs it before claiming prospects."""

    def __init__(
        self,
        *,
        store: ProspectStore,
        calls: Calls,
        settings: Settings,
        note: NoteCreated | None = None,
    ) -> None:
        self.store = store
        self.note = note
        self.emails = EmailStore(store.redis, store.keys)
        self.calls = calls
        self.settings = settings
        #: Connections whose Outreach answered 400 to a list of emails (one per request).
        self.no_lists: set[str] = set()
        self._http = asyncio.Semaphore(settings.http_concurrency)

    async def run(self, lot: Lot, stats: Counter[str]) -> bool:
        """One batch of due emails; True when some were claimed (their prospects may be due
        now), False when none was."""
        dest = lot.dest.id
        claimed = await self.emails.claim(
            dest,
            now_ms=now_ms(),
            lease_ms=self.settings.lease_ms,
            batch=self.settings.resolve_batch,
            token=lot.token,
        )
        if not claimed:
            return False
        stats["resolve_claimed"] += len(claimed)
        names = [w.email for w in claimed]
        # A create left unsettled is settled by a fresh lookup, never by the cache.
        owed = await self.emails.intents(dest, names)
        known = await self.emails.cached(dest, [e for e in names if e not in owed])
        stats["resolve_cache_hits"] += len(known)
        asked = [e for e in names if e not in known]
        if asked:
            lists = lot.conn.id not in self.no_lists
            found = await look_up(self.calls, lot, asked, lists=lists)
            if found.lists_refused:
                self.no_lists.add(lot.conn.id)
            stats["resolve_lookups"] += found.requests
            stats["resolve_looked_up"] += len(found.found)
            await self.emails.remember(
                dest,
                found.found,
                found_s=self.settings.resolve_cache_found_s,
                missing_s=self.settings.resolve_cache_missing_s,
            )
            known.update(found.found)
            later = now_ms() + int(found.wait_s * 1000)
            for w in claimed:
                if w.email in found.unanswered:
                    await self.emails.release(dest, w, lot.token, due_ms=later)
        creates: list[Waiting] = []
        for w in claimed:
            if w.email not in known:
                continue
            decision = decide(known[w.email], _identity(lot.dest))
            stats["resolve_not_found"] += not known[w.email]
            stats["resolve_ambiguous"] += len({p for p, _ in known[w.email]}) > 1
            if decision.action == "create":
                creates.append(w)
            else:
                await self._settle(lot, w, decision, stats)
        if creates:
            await asyncio.gather(*(self._create(lot, w, stats) for w in creates))
        return True

    async def _settle(self, lot: Lot, w: Waiting, d: Decision, stats: Counter[str]) -> None:
        dest = lot.dest.id
        if d.action == "adopt":
            moved = await self.emails.adopt(dest, w, d.prospects, lot.token, now_ms=now_ms())
            stats["resolve_adopted"] += moved >= 0
        else:
            await self._fail(lot, w, d.reason, d.detail, stats)

    async def _fail(
        self, lot: Lot, w: Waiting, reason: str, detail: str, stats: Counter[str]
    ) -> None:
        """Record ``w``'s changes as a failure (replayable), then drop them from waiting."""
        dest, at = lot.dest.id, now_ms()
        record = email_failure(dest, w, reason, detail, at_ms=at)
        await self.store.record_failure(dest, record["id"], record)
        count_failed(stats, reason, w.fields)
        await self.emails.release(dest, w, lot.token, due_ms=at, drop=True)

    async def _create(self, lot: Lot, w: Waiting, stats: Counter[str]) -> None:
        dest, token = lot.dest.id, lot.token
        lease = self.settings.lease_ms
        verdict = await self.emails.intend(dest, w.email, token, now_ms=now_ms(), lease_ms=lease)
        if verdict == "taken":
            await self.emails.no_intent(dest, w.email)
            detail = "Outreach refused a create as already taken, yet no lookup finds the email"
            await self._fail(lot, w, "create_taken_not_found", detail, stats)
            return
        if verdict != "go":
            if verdict == "busy":  # another drain's create of it may still be under way
                await self.emails.release(dest, w, token, due_ms=now_ms() + lease)
            return
        body = prospect_create_bytes(w.email, w.fields)
        async with self._http:
            sent = await self.calls.send(lot, "POST", f"{self.calls.api_url}/prospects", body=body)
        if isinstance(sent, NoPermit):
            await self.emails.no_intent(dest, w.email)
            await self.emails.release(dest, w, token, due_ms=now_ms() + int(sent.wait_s * 1000))
            return
        stats["resolve_create_requests"] += 1
        await self._created(lot, w, sent, stats)

    async def _created(self, lot: Lot, w: Waiting, sent: Sent, stats: Counter[str]) -> None:
        dest, token, status = lot.dest.id, lot.token, sent.status
        if status == 201:
            prospect = int(json.loads(sent.body)["data"]["id"])
            if self.note is not None:
                # The create delivered these fields, as a PATCH would have: what they call for
                # (an enrollment) is noted before the email's claim is settled.
                await self.note(lot.dest, token, prospect, w.fields, w.email)
            await self.emails.remember(
                dest,
                {w.email: [(prospect, "")]},
                found_s=self.settings.resolve_cache_found_s,
                missing_s=self.settings.resolve_cache_missing_s,
            )
            await self.emails.adopt(dest, w, [prospect], token, now_ms=now_ms(), sent=True)
            stats["resolve_created"] += 1
            count_delivered(stats, lot.dest, w.fields)
            return
        answer = sent.answer
        taken = status == 422 and TAKEN in sent.body
        if status in (401, 429) or (400 <= status < 500 and not taken):
            await self.emails.no_intent(dest, w.email)  # refused: nothing was created
        if 400 <= status < 500 and status not in (401, 429) and not taken:
            detail = answer.detail or f"Outreach answered {status} to the create"
            await self._fail(lot, w, f"create_http_{status}", detail, stats)
            return
        if taken or not 400 <= status < 500:
            # It exists (422 taken), or it may (no answer, 5xx): look it up, not the cache.
            state: IntentState = "taken" if taken else "unknown"
            await self.emails.unknown(dest, w.email, token, now_ms=now_ms(), state=state)
            await self.emails.forget(dest, [w.email])
            stats["resolve_create_unknown"] += not taken
        back = answer.resume_s or answer.retry_at_s
        wait_ms = int((back - answer.received_s) * 1000) if back else 0
        if not taken and wait_ms <= 0:
            wait_ms = int(self.settings.retry_backoff_base_s * 1000)
        await self.emails.release(dest, w, token, due_ms=now_ms() + wait_ms)


def _identity(dest: Destination) -> Identity:
    return dest.identity or Identity()


def now_ms() -> int:
    return int(time.time() * 1000)


def email_failure(dest: str, w: Waiting, reason: str, detail: str, *, at_ms: int) -> dict[str, Any]:
    """The dead letter of an email's changes: replay puts them back under the email, where
    they are resolved again (``app.store.failures.replay``)."""
    digest = hashlib.sha256(w.email.encode()).hexdigest()[:12]
    return {
        "id": f"email-{digest}:{at_ms}:{min(w.fields)}",
        "destination": dest,
        "prospect": None,
        "email": w.email,
        "reason": reason,
        "fields": w.fields,
        "versions": {f: int(v) for f, v in w.versions.items()},
        "mapping_ids": sorted(filter(None, map(mapping_id_of, w.fields))),
        "status": None,
        "error": "Unresolved",
        "detail": detail,
        "attempts": 1,
        "at_ms": at_ms,
    }
