"""``connections check``: confirm, on the operator's own Outreach account, what the service
assumes of it before going live: the token and its scopes, the rate-limit headers and what
the quota gate makes of them, the custom fields the destinations write, and (with a
prospect to write) what one bulk call costs.

Every request takes a permit of the quota gate like a delivery's, and its answer is reported
to the gate. At most `MAX_REQUESTS` (`MAX_REQUESTS_WRITE` when writing); nothing is written
without a prospect to write, and then only one field of it, set to the value it holds.
The findings themselves are `app.delivery.account_lines`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from pydantic import ValidationError

from app.config.destinations import Connection, Destination
from app.connections.crypto import cipher_for
from app.connections.oauth import TokenManager
from app.connections.records import ConnectionRecord, ConnectionStore
from app.core.errors import Retryable
from app.core.settings import Settings
from app.delivery.account_lines import (
    CheckReport,
    charge_line,
    field_lines,
    header_line,
    quota_line,
    scope_line,
    token_line,
)
from app.outreach.account import TYPES, CustomFieldType, custom_fields_of, parse_types
from app.outreach.account import prospect_values as parse_prospect
from app.outreach.answers import Answer, no_answer, parse_answer
from app.outreach.bulk import BulkAnswer, BulkBatch, BulkClient, BulkModification, ProspectIds
from app.outreach.client import OutreachClient, Response
from app.ratelimit.gate import QuotaGate, gate_for
from app.store.audience_map import learned_table
from app.store.registry import stored_destinations

#: Requests a check may send: reading only, and with one bulk write.
MAX_REQUESTS = 5
MAX_REQUESTS_WRITE = 10
#: How long a request waits for a permit of the quota gate before the check gives up.
PERMIT_WAIT_S = 10.0
#: Polls of the one bulk batch, the first after this wait (then doubling).
BATCH_POLLS = 3
BATCH_POLL_FIRST_S = 0.5

Call = Callable[[str], Awaitable[Response]]


class CheckAborted(Exception):
    """The check cannot go on (no permit, no answer, its request budget spent)."""


@dataclass(slots=True)
class _Sender:
    """Sends the check's requests through the gate; refreshes the token once after a 401."""

    conn: Connection
    gate: QuotaGate
    tokens: TokenManager
    fallback_pause_s: float
    report: CheckReport
    budget: int
    token: str = ""
    generation: int = 0

    async def send(self, call: Call) -> tuple[Response, Answer]:
        resp, answer = await self._once(call)
        if resp.status == 401:
            await self.tokens.after_unauthorized(self.conn.id, self.generation)
            fresh = await self.tokens.current(self.conn.id)
            if fresh is not None and fresh.token and fresh.generation != self.generation:
                self.token, self.generation = fresh.token, fresh.generation
                resp, answer = await self._once(call)
        return resp, answer

    async def _once(self, call: Call) -> tuple[Response, Answer]:
        if self.report.requests >= self.budget:
            raise CheckAborted(f"the check's budget of {self.budget} requests is spent")
        grant = await self._permit()
        self.report.requests += 1
        sent = time.time()
        try:
            resp = await call(self.token)
        except Retryable as exc:
            await self.gate.observe(self.conn.user, no_answer(), sent_s=sent, grant=grant)
            raise CheckAborted(f"Outreach did not answer: {exc.detail}") from exc
        answer = parse_answer(
            resp.status, resp.headers, resp.body, fallback_pause_s=self.fallback_pause_s
        )
        await self.gate.observe(self.conn.user, answer, sent_s=sent, grant=grant)
        return resp, answer

    async def _permit(self) -> str:
        deadline = time.monotonic() + PERMIT_WAIT_S
        conn = self.conn
        while True:
            grant = await self.gate.acquire(
                conn.user, 1, limit=conn.rate_limit, reserve_share=conn.reserve_share
            )
            if grant.granted:
                return grant.id
            if time.monotonic() + grant.wait_s > deadline:
                raise CheckAborted(
                    f"the quota gate gave no permit for user {conn.user!r} within "
                    f"{PERMIT_WAIT_S:.0f} s (paused, or its quota spent; next in "
                    f"{grant.wait_s:.0f} s)"
                )
            await asyncio.sleep(grant.wait_s)


class AccountCheck:
    """Checks connections against the Outreach accounts their tokens belong to."""

    def __init__(
        self, redis: aioredis.Redis, session: aiohttp.ClientSession, settings: Settings
    ) -> None:
        self.redis, self.settings, self.keys = redis, settings, settings.keys
        self.conns = ConnectionStore(redis, self.keys, cipher_for(settings))
        self.tokens = TokenManager.from_settings(self.conns, session, settings)
        self.gate = gate_for(redis, settings)
        self.client = OutreachClient(
            session, api_url=settings.outreach_api_url, timeout_s=settings.outreach_timeout_s
        )
        self.bulk = BulkClient(self.client, fallback_pause_s=settings.rate_limit_fallback_pause_s)

    async def aclose(self) -> None:
        await self.gate.aclose()

    async def run(self, conn_id: str, *, prospect: int | None = None) -> CheckReport:
        """Check connection ``conn_id``; with ``prospect``, one bulk call writing it (when a
        destination of the connection has bulk delivery on)."""
        report = CheckReport(conn_id)
        rec = await self.conns.get(conn_id)
        if rec is None:
            report.add(
                "connection",
                "fail",
                f"no connection {conn_id!r}",
                "add it: outreach-sync connections add, or connections authorize",
            )
            return report
        dests = await self._destinations(conn_id, report)
        bulk_on = [d for d in dests if d.bulk.enabled]
        write = prospect is not None and bool(bulk_on)
        enrolls = any(d.sequencing.enabled for d in dests)
        scopes_ok = scope_line(report, rec, bulk=bool(bulk_on), write=write, sequences=enrolls)
        budget = MAX_REQUESTS_WRITE if write else MAX_REQUESTS
        sender = _Sender(
            rec.metadata(),
            self.gate,
            self.tokens,
            self.settings.rate_limit_fallback_pause_s,
            report,
            budget,
        )
        try:
            if await self._token(sender, report, rec):
                usable = await self._account(sender, report, rec, dests)
                if usable is None:
                    pass  # nothing more can be learned of an account not reached
                elif write and not scopes_ok:
                    report.add(
                        "bulk write",
                        "warn",
                        "not sent: it needs the scopes above",
                        "run it again once they are granted",
                    )
                else:
                    await self._bulk(sender, report, bulk_on, usable, prospect)
        except CheckAborted as exc:
            report.add("check", "fail", str(exc), "fix the cause and run the check again")
        return report

    async def _token(self, sender: _Sender, report: CheckReport, rec: ConnectionRecord) -> bool:
        token = await self.tokens.current(rec.id)
        if token is None or token.token is None:
            why = "the connection is gone" if token is None else token.blocked
            report.add(
                "token",
                "fail",
                f"no usable access token ({why})",
                f"authorize again: outreach-sync connections authorize {rec.id}",
            )
            return False
        sender.token, sender.generation = token.token, token.generation
        return True

    async def _account(
        self, sender: _Sender, report: CheckReport, rec: ConnectionRecord, dests: list[Destination]
    ) -> list[str] | None:
        """The token, the rate-limit headers, the gate and the custom fields, from one request;
        the usable fields, or None when Outreach refused the token."""
        url = self.client.api_url + TYPES
        resp, answer = await sender.send(lambda t: self.client.call(t, "GET", url))
        token_line(report, rec, resp.status, answer)
        if resp.status == 401:
            return None
        header_line(report, resp.headers, answer.received_s)
        conn = sender.conn
        quota_line(report, conn, answer, await self.gate.state(conn.user, limit=conn.rate_limit))
        users, learning = await self._fields(dests)
        return field_lines(report, _types(resp), users, learning=learning)

    async def _bulk(
        self,
        sender: _Sender,
        report: CheckReport,
        bulk_on: list[Destination],
        usable: list[str],
        prospect: int | None,
    ) -> None:
        if not bulk_on:
            if prospect is not None:
                report.add(
                    "bulk write",
                    "warn",
                    "no destination of it has bulk on: nothing sent",
                    "turn bulk on for one (bulk.enabled) to measure what a call costs",
                )
            return
        names = ", ".join(d.id for d in bulk_on)
        if prospect is None:
            report.add(
                "bulk charge",
                "warn",
                f"bulk on for {names}; its charge is unconfirmed",
                "measure it: connections check ID --write --prospect P (one bulk call "
                "on P, writing the value it holds)",
            )
            return
        if not usable:
            report.add(
                "bulk write",
                "fail",
                "no usable custom field to write",
                "fix the fields above first",
            )
            return
        await self._bulk_write(sender, report, prospect, usable[0])

    async def _bulk_write(
        self, sender: _Sender, report: CheckReport, prospect: int, name: str
    ) -> None:
        """Read ``name`` of ``prospect``, bulk-write the same value, follow the batch, and
        read it again: nothing may have changed."""
        resp, answer = await self._read(sender, prospect)
        held = _values(resp, prospect)
        if isinstance(held, str):
            report.add("bulk write", "fail", held, "name a prospect that exists (--prospect)")
            return
        value = held.get(name)
        before = None if answer.budget is None else answer.budget.remaining
        mod = BulkModification(ProspectIds([prospect]), {name: value})
        call: list[BulkAnswer[BulkBatch]] = []
        resp, answer = await sender.send(lambda t: _kept(call, self.bulk.modify(t, mod)))
        batch = call[-1].value if call else None
        if batch is None:
            report.add(
                "bulk call",
                "fail",
                f"Outreach refused it ({resp.status}): {answer.detail}",
                "fix the cause (scopes: authorize again) or turn bulk off (bulk.enabled)",
            )
            return
        after = None if answer.budget is None else answer.budget.remaining
        charge_line(report, before, after)
        batch = await self._follow(sender, batch)
        resp, _ = await self._read(sender, prospect)
        now = _values(resp, prospect)
        same = not isinstance(now, str) and now.get(name) == value
        detail = f"batch {batch.id} {batch.state or 'unnamed state'} ({batch.total} record)"
        if batch.failures:
            report.add(
                "bulk call",
                "fail",
                f"{detail}: Outreach failed to write it ({batch.failures} failure)",
                f"see the {name} line; GET /batchItems?filter[batch][id]={batch.id} says why",
            )
        elif not same:
            report.add(
                "bulk call",
                "fail",
                f"{detail}; {name} of {prospect} changed",
                "report it: the bulk body form may differ on this account",
            )
        elif batch.finished:
            report.add("bulk call", "ok", f"{detail}; {name} of {prospect} unchanged")
        else:
            report.add(
                "bulk call",
                "warn",
                f"{detail}: not finished after {BATCH_POLLS} polls",
                "nothing to do: bulk.timeout_s bounds how long a batch may take",
            )

    async def _follow(self, sender: _Sender, batch: BulkBatch) -> BulkBatch:
        wait_s = BATCH_POLL_FIRST_S
        for _ in range(BATCH_POLLS):
            if batch.finished or batch.canceled:
                break
            await asyncio.sleep(wait_s)
            wait_s *= 2
            batch = await self._poll(sender, batch)
        return batch

    async def _poll(self, sender: _Sender, batch: BulkBatch) -> BulkBatch:
        got: list[BulkAnswer[BulkBatch]] = []
        await sender.send(lambda t: _kept(got, self.bulk.batch(t, batch.id)))
        return got[-1].value if got and got[-1].value is not None else batch

    async def _read(self, sender: _Sender, prospect: int) -> tuple[Response, Answer]:
        url = f"{self.client.api_url}/prospects/{prospect}"
        return await sender.send(lambda t: self.client.call(t, "GET", url))

    async def _destinations(self, conn_id: str, report: CheckReport) -> list[Destination]:
        found: list[Destination] = []
        for dest_id, raw in sorted((await stored_destinations(self.redis, self.keys)).items()):
            try:
                dest = Destination.model_validate_json(raw)
            except ValidationError:
                # One unreadable destination harms only itself.
                report.add(
                    f"destination {dest_id}",
                    "warn",
                    "its stored definition cannot be read",
                    "publish it again (outreach-sync config load, or the admin API)",
                )
                continue
            if dest.connection == conn_id:
                found.append(dest)
        if not found:
            report.add(
                "destinations",
                "warn",
                "no destination uses this connection",
                "nothing of the fields to check: create one that does",
            )
        return found

    async def _fields(self, dests: list[Destination]) -> tuple[dict[str, list[str]], list[str]]:
        """Every custom field written through the connection -> who writes it; and the
        destinations learning their mapping IDs from the data that learned none yet."""
        users: dict[str, list[str]] = {}
        learning: list[str] = []
        for dest in dests:
            ids = dict(dest.audiences)
            if dest.mapping_ids == "data":
                ids |= await learned_table(self.redis, self.keys, dest.id)
                if not ids:
                    learning.append(dest.id)
            for audience, n in ids.items():
                for name in custom_fields_of({n}, set()):
                    users.setdefault(name, []).append(f"{dest.id} audience {audience}")
            for source, target in dest.attributes.items():
                for name in custom_fields_of(set(), {target}):
                    users.setdefault(name, []).append(f"{dest.id} attribute {source}")
        return users, learning


async def _kept(
    into: list[BulkAnswer[BulkBatch]], pending: Awaitable[BulkAnswer[BulkBatch]]
) -> Response:
    """Run a bulk call, keep its parsed answer, hand the raw one to the sender."""
    answer = await pending
    into.append(answer)
    return answer.response


def _types(resp: Response) -> dict[str, CustomFieldType] | str:
    """The custom fields of a ``GET /types`` answer, or why they cannot be read."""
    try:
        return parse_types(json.loads(resp.body))
    except ValueError as exc:
        return f"GET /types answered {resp.status} in a shape this check does not know ({exc})"


def _values(resp: Response, prospect: int) -> dict[str, Any] | str:
    """A prospect's attributes from ``GET /prospects/{id}``, or why they cannot be read."""
    try:
        return parse_prospect(json.loads(resp.body), prospect)
    except ValueError as exc:
        return f"GET /prospects/{prospect} answered {resp.status}: {exc}"
