"""The enrollment stage of a drain: claims due enrollments and exits of one destination and
sends them under the quota gate, each exactly once (STYLE 17).

An enrollment is sent only while its record says ``sending`` under this pass's lease. An
answer that does not say whether Outreach created the state (a timeout, a dropped
connection, a 5xx, a worker killed before the outcome was recorded) leaves it *unknown*:
before anything is sent again the prospect's state in the sequence is looked up, and one
found settles it as enrolled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.config.destinations import Connection, Destination
from app.config.sequencing import SequenceRule, Sequencing
from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable
from app.core.settings import Settings
from app.enroll.calls import (
    LIVE_STATES,
    Caller,
    created_id,
    enroll_body,
    read_states,
    state_filter,
)
from app.enroll.mailboxes import Mailboxes, NoMailbox
from app.enroll.rules import Refusal, audience_fields, intents, read_refusal
from app.enroll.store import EnrollStore, Job, Outcome
from app.outreach.client import Response

log = logging.getLogger(__name__)


class FailureSink(Protocol):
    """Where refusals are kept as dead letters (`app.store.prospects.ProspectStore`)."""

    async def record_failure(self, dest: str, failure_id: str, record: dict[str, Any]) -> None: ...


#: The audience table learned from the data (``mapping_ids: "data"``) of a destination.
Learned = Callable[[str], Awaitable[Mapping[str, int]]]


@dataclass(frozen=True, slots=True)
class Sending:
    """What one pass sends with: the destination, its connection and access token, and the
    pass's lease token."""

    dest: Destination
    conn: Connection
    access_token: str | None
    token: str

    @property
    def rules(self) -> Sequencing:
        return self.dest.sequencing


class _Halt(Exception):
    """This job ends now with ``outcome``; ``stop`` ends the pass too (no permit, paused)."""

    def __init__(self, outcome: Outcome, *, stop: bool = False) -> None:
        super().__init__(outcome.state)
        self.outcome = outcome
        self.stop = stop


def backoff_ms(rules: Sequencing, attempts: int) -> int:
    """Pause after the ``attempts``-th failed send, with jitter (50-100%)."""
    raw = min(rules.retry_cap_s, rules.retry_base_s * 2.0 ** min(attempts, 20))
    return int(raw * (0.5 + 0.5 * random.random()) * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


class Enrollment:
    """Notes what delivered audience fields call for, and sends it."""

    def __init__(
        self,
        *,
        store: EnrollStore,
        caller: Caller,
        mailboxes: Mailboxes,
        failures: FailureSink,
        learned: Learned,
        settings: Settings,
    ) -> None:
        self.store = store
        self.caller = caller
        self.mailboxes = mailboxes
        self.failures = failures
        self.learned = learned
        self.settings = settings

    async def note(
        self,
        dest: Destination,
        token: str,
        delivered: Sequence[tuple[int, Mapping[str, Any]]],
        *,
        by_email: str | None = None,
    ) -> int:
        """Record the enrollments and exits of ``delivered`` (prospect, fields) while their
        claims are still ``token``'s: call before settling them. ``by_email``: the prospect
        was created for that email, whose claim is the one to hold."""
        if not dest.sequencing.enabled or not delivered:
            return 0
        learned = await self.learned(dest.id) if dest.mapping_ids == "data" else {}
        by_field = audience_fields(dest, learned)
        found = [i for p, fields in delivered for i in intents(dest, by_field, p, fields)]
        return await self.store.note(dest.id, token, found, now_ms=now_ms(), by_email=by_email)

    async def run(self, s: Sending, stats: Counter[str]) -> None:
        """Send what is due of ``s.dest``, up to ``per_drain``, while permits last (what a
        destination no longer enrolls for is cancelled)."""
        jobs = await self.store.claim(
            s.dest.id,
            s.token,
            now_ms=now_ms(),
            lease_ms=self.settings.lease_ms,
            most=s.rules.per_drain,
        )
        # Jobs go out side by side (HTTP_CONCURRENCY), each one's steps in order; a job that
        # ends the pass (no permit, paused) stops those not yet started: they wait as they were.
        gate = asyncio.Semaphore(self.settings.http_concurrency)
        stop: list[Outcome] = []

        async def one(job: Job) -> None:
            async with gate:
                if stop:
                    outcome = _same(job, stop[0])
                else:
                    try:
                        outcome = await self._one(s, job, stats)
                    except _Halt as halt:
                        outcome = halt.outcome
                        if halt.stop:
                            stop.append(halt.outcome)
                await self._settle(s, job, outcome, stats)

        results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res

    async def _settle(self, s: Sending, job: Job, outcome: Outcome, stats: Counter[str]) -> None:
        if outcome.state in ("refused", "failed"):
            await self._record(s, job, outcome)
        if not await self.store.settle(s.dest.id, s.token, job, outcome, now_ms=now_ms()):
            stats["enroll_late_settles"] += 1
        stats[f"enroll_{outcome.count or outcome.state}"] += 1

    async def _one(self, s: Sending, job: Job, stats: Counter[str]) -> Outcome:
        rule = s.rules.sequences.get(job.audience)
        if rule is None:
            return Outcome("cancelled", count="unconfigured")
        if s.rules.dry_run:
            what = "enroll" if job.op == "enroll" else rule.on_exit
            return Outcome("dry", count=f"would_{what}")
        if job.op == "exit":
            return await self._exit(s, job, rule, stats)
        if job.unknown or job.then == "out":
            # Settle an unknown outcome by looking it up before anything is sent again.
            found = await self._lookup(s, job, stats)
            if found:
                return Outcome("enrolled", count="found_after_unknown", state_id=found[0][0])
            if job.then == "out":
                return Outcome("cancelled", count="cancelled")
        return await self._enroll(s, job, rule, stats)

    async def _enroll(
        self, s: Sending, job: Job, rule: SequenceRule, stats: Counter[str]
    ) -> Outcome:
        try:
            mailbox = await self.mailboxes.resolve(
                rule,
                conn_id=s.conn.id,
                conn_user=s.conn.user,
                prospect=job.prospect,
                get=lambda path, params: self._get(s, job, path, params, stats),
            )
        except NoMailbox as exc:
            return await self._refused(s, job, Refusal(False, exc.reason, exc.text))
        body = enroll_body(job.prospect, job.sequence, mailbox)
        resp = await self._send(s, job, "POST", "sequenceStates", None, body, stats, write=True)
        if 200 <= resp.status < 300:
            return Outcome("enrolled", count="enrolled", state_id=created_id(resp.body))
        refusal = read_refusal(resp.status, resp.body, already_texts=s.rules.already_texts)
        if refusal.already:
            return Outcome("already", count="already", why=refusal.text)
        return await self._refused(s, job, refusal)

    async def _refused(self, s: Sending, job: Job, refusal: Refusal) -> Outcome:
        if not refusal.pauses:
            return Outcome("refused", count=f"refused:{refusal.reason}", why=refusal.text)
        # Every enrollment of the destination would be refused alike: pause them all until
        # an operator fixes it (or ``pause_s`` passes); field updates go on.
        until = now_ms() + int(s.rules.pause_s * 1000)
        await self.store.pause(
            s.dest.id, until_ms=until, reason=f"{refusal.reason}: {refusal.text}"
        )
        log.error(
            "destination %s: enrollment paused (%s): %s", s.dest.id, refusal.reason, refusal.text
        )
        again = Outcome(
            "retry", count=f"paused:{refusal.reason}", due_ms=until, tries=0, unknown=job.unknown
        )
        raise _Halt(again, stop=True)

    async def _exit(self, s: Sending, job: Job, rule: SequenceRule, stats: Counter[str]) -> Outcome:
        action = job.on_exit if job.on_exit in ("finish", "pause") else rule.on_exit
        if action == "none":
            return Outcome("left", count="left")
        wanted = LIVE_STATES if action == "finish" else frozenset({"active"})
        acted = 0
        for state_id, state in await self._lookup(s, job, stats):
            if state not in wanted:
                continue
            path = f"sequenceStates/{state_id}/actions/{action}"
            # 200, or 422 when it no longer applies (finished meanwhile): settled alike.
            resp = await self._send(s, job, "POST", path, None, None, stats, write=False)
            acted += resp.status < 300
        done = {"finish": "finished", "pause": "paused"}[action]
        return Outcome("left", count=done if acted else "exit_nothing_active")

    async def _lookup(self, s: Sending, job: Job, stats: Counter[str]) -> list[tuple[int, str]]:
        params = state_filter(job.prospect, job.sequence)
        resp = await self._get(s, job, "sequenceStates", params, stats)
        if resp.status == 403:
            await self._refused(s, job, read_refusal(403, resp.body, already_texts=()))
        return read_states(resp.body) if resp.status == 200 else []

    async def _get(
        self, s: Sending, job: Job, path: str, params: dict[str, str] | None, stats: Counter[str]
    ) -> Response:
        return await self._send(s, job, "GET", path, params, None, stats, write=False)

    async def _send(
        self,
        s: Sending,
        job: Job,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: bytes | None,
        stats: Counter[str],
        *,
        write: bool,
    ) -> Response:
        """One request on a permit; a 4xx answer is returned, anything else ends the job."""
        grant = await self.caller.permit(s.dest.id, s.conn, s.rules.quota_share)
        if not grant.granted:
            due = now_ms() + int(max(grant.wait_s, 0.05) * 1000)
            raise _Halt(Outcome("retry", due_ms=due, tries=0, unknown=job.unknown), stop=True)
        until = now_ms() + self.settings.lease_ms
        if write and not await self.store.renew(s.dest.id, s.token, job, until_ms=until):
            # Taken over by another drain (this one waited past the lease): it decides.
            await self.caller.gate.refund(s.conn.user, grant.id, 1)
            raise _Halt(Outcome("retry", due_ms=until, tries=0, unknown=job.unknown))
        if s.access_token is None:
            await self.caller.gate.refund(s.conn.user, grant.id, 1)
            later = Outcome("retry", due_ms=now_ms() + 1000, tries=0, unknown=job.unknown)
            raise _Halt(later, stop=True)
        stats["enroll_requests"] += 1
        reply = await self.caller.send(
            s.conn, s.access_token, grant, method, path, params=params, body=body
        )
        if reply.response is not None and (
            reply.error is None or isinstance(reply.error, Permanent)
        ):
            return reply.response
        raise _Halt(self._again(s, job, reply.error, write=write))

    def _again(self, s: Sending, job: Job, err: DeliveryError | None, *, write: bool) -> Outcome:
        """A send without a usable answer: again after a backoff, its outcome unknown when it
        was a write that Outreach may have applied (no answer, or a 5xx); failed after
        ``max_attempts``. A 401 or 429 says it did nothing."""
        applied_maybe = isinstance(err, Retryable) and (err.status is None or err.status >= 500)
        unknown = job.unknown or (write and applied_maybe)
        if isinstance(err, RateLimited):
            return Outcome("retry", due_ms=int(err.reset_s * 1000), tries=0, unknown=unknown)
        if job.attempts + 1 >= s.rules.max_attempts and not unknown:
            return Outcome("failed", count="failed", why=str(err))
        # An unknown outcome is never given up: it is looked up until Outreach answers.
        due = now_ms() + backoff_ms(s.rules, job.attempts)
        figure = "unknown" if write and applied_maybe else None
        return Outcome("retry", count=figure, due_ms=due, unknown=unknown)

    async def _record(self, s: Sending, job: Job, outcome: Outcome) -> None:
        at = now_ms()
        reason = (outcome.count or outcome.state).removeprefix("refused:")
        record = {
            "id": f"{job.prospect}:{at}:seq{job.sequence}",
            "destination": s.dest.id,
            "prospect": job.prospect,
            "reason": f"enroll_{reason}",
            "fields": {},
            "versions": {},
            "mapping_ids": [],
            "enrollment": {"sequence": job.sequence, "audience": job.audience},
            "status": 422 if outcome.state == "refused" else None,
            "error": "EnrollmentRefused" if outcome.state == "refused" else "EnrollmentFailed",
            "detail": outcome.why or "",
            "attempts": job.attempts + 1,
            "at_ms": at,
        }
        await self.failures.record_failure(s.dest.id, str(record["id"]), record)


def _same(job: Job, stop: Outcome) -> Outcome:
    """A job not tried in a pass that stopped: it waits until ``stop``'s due, as it was."""
    return Outcome("retry", due_ms=stop.due_ms, tries=0, unknown=job.unknown)
