"""Sequence enrollment, in process: the real drain on real Redis against the sandbox over
HTTP. Each test drains until nothing is pending, in flight or due for enrollment, then
checks the sandbox's sequence states (exactly one per prospect and sequence) and its log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from app.api.prometheus import exposition
from app.api.status_page import render_destination
from app.config.destinations import parse_config
from app.connections.oauth import AccessToken, RefreshOutcome, authorize_url
from app.core.keys import Keys
from app.delivery.drain import Deliverer
from app.enroll import EnrollStore
from app.enroll.store import connection_enrolls
from app.ingest.batch import ingest_async
from app.ops.alerts import LastHour, conditions, snapshot_from_status
from app.ops.status import destination_status
from app.outreach.client import OutreachClient
from app.ratelimit.gate import gate_for
from app.sandbox.scopes import ALL_SCOPES
from app.store.failures import list_failures
from app.store.prospects import ProspectStore, encode
from app.store.registry import Registry, publish_sync
from tests.support import ROOT, TEST_REDIS_URL, Sandbox, make_settings, settings_env

D = "d"
SEQ = 7
MAILBOX = 45
USER = "test-user"
FIELD = "custom5"


class Tokens:
    async def current(self, conn_id: str) -> AccessToken | None:
        return AccessToken(conn_id, "test-token", 1)

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        return RefreshOutcome.REFRESHED


@dataclass
class Rig:
    deliverer: Deliverer
    store: ProspectStore
    enroll: EnrollStore
    sandbox: Sandbox
    rclient: redis.Redis
    keys: Keys

    async def member(self, prospect: int, status: str) -> None:
        now = int(time.time() * 1000)
        changes = {prospect: [(FIELD, encode(status), now)]}
        await self.store.merge(D, changes, now_ms=now - 10, window_ms=0)

    async def settle_all(self, timeout_s: float = 10.0) -> Counter[str]:
        """Drain until nothing is pending, in flight or due for enrollment."""
        stats: Counter[str] = Counter()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.deliverer.drain(D, stats=stats)
            due, flying = await self.store.backlog(D)
            figures = await self.enroll.figures(D)
            paused = figures.paused_until_ms > time.time() * 1000
            if not due and not flying and (not figures.waiting or paused):
                return stats
            await asyncio.sleep(0.02)
        raise AssertionError(f"not settled: {await self.enroll.figures(D)}")

    def states(self, prospect: int | None = None) -> list[dict[str, Any]]:
        query = "" if prospect is None else f"?prospect_id={prospect}"
        found: list[dict[str, Any]] = self.sandbox.get(f"/_sandbox/sequence-states{query}")[
            "states"
        ]
        return found

    def log(self) -> list[tuple[str, str, int]]:
        reqs = self.sandbox.get("/_sandbox/requests?since=0")["requests"]
        return [(r["method"], r["path"], r["status"]) for r in reqs]

    async def status(self) -> Any:
        d = self.deliverer
        return await destination_status(D, store=d.store, registry=d.registry, gate=d.gate)

    def enroll_calls(self) -> list[tuple[str, str, int]]:
        return [x for x in self.log() if "sequenceStates" in x[1]]

    async def figures(self) -> dict[str, int]:
        return (await self.enroll.figures(D)).by_audience.get("aud", {})


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox()
    yield sandbox
    sandbox.stop()


@pytest.fixture
async def rig(
    prefix: str, rclient: redis.Redis, shared_sandbox: Sandbox
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[aioredis.Redis, aiohttp.ClientSession]] = []
    sandbox = shared_sandbox

    async def make(
        *,
        opted_out: tuple[int, ...] = (),
        bulk: dict[str, Any] | None = None,
        identity: dict[str, Any] | None = None,
        **sequencing: Any,
    ) -> Rig:
        sandbox.post("/_sandbox/reset")
        sandbox.post("/_sandbox/config", {"static_token_scope": ALL_SCOPES})
        sandbox.post(
            "/_sandbox/sequences",
            {"sequences": [{"id": SEQ, "name": "s", "enabled": True}]},
        )
        mailbox = {"id": MAILBOX, "user": USER, "email": "u@x.com", "default": True}
        sandbox.post("/_sandbox/mailboxes", {"mailboxes": [mailbox]})
        if opted_out:
            sandbox.post("/_sandbox/opted-out", {"prospect_ids": list(opted_out)})
        env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="0")
        settings = make_settings(env)
        rule = {"sequence": SEQ, "mailbox": MAILBOX, **sequencing.pop("rule", {})}
        config = {
            "connections": [{"id": "c", "user": USER, "access_token": "test-token"}],
            "destinations": [
                {
                    "id": D,
                    "name": D,
                    "connection": "c",
                    "audiences": {"aud": 5},
                    "sequencing": {"sequences": {"aud": rule}, "retry_base_s": 0.02, **sequencing},
                    "bulk": bulk or {},
                    **({"identity": identity} if identity else {}),
                }
            ],
        }
        publish_sync(rclient, Keys(prefix), parse_config(config))
        aclient = aioredis.from_url(TEST_REDIS_URL)
        session = aiohttp.ClientSession()
        made.append((aclient, session))
        store = ProspectStore(aclient, settings.keys)
        deliverer = Deliverer(
            store=store,
            registry=Registry(aclient, settings.keys),
            client=OutreachClient(session, api_url=settings.outreach_api_url, timeout_s=5),
            gate=gate_for(aclient, settings),
            settings=settings,
            refresher=Tokens(),
        )
        enroll = EnrollStore(aclient, settings.keys)
        return Rig(deliverer, store, enroll, sandbox, rclient, settings.keys)

    yield make
    for aclient, session in made:
        await session.close()
        await aclient.aclose()


async def test_a_prospect_created_for_an_email_is_enrolled_after_its_create(rig: Any) -> None:
    """A profile known only by email, its prospect missing: one create carries its fields,
    then the audience it entered enrolls the new prospect, once."""
    r: Rig = await rig(identity={"match": ["OutreachId", "Email"], "on_missing": "create"})
    dest = await r.deliverer.registry.destination(D)
    assert dest is not None
    seen = "2026-11-20T10:00:00Z"
    entered = {"ups": {"aud": {"status": "realized", "lastQualificationTime": seen}}}
    doc = {"identityMap": {"Email": [{"id": "new@example.com"}]}, "segmentMembership": entered}
    await ingest_async(r.store, dest, [doc], window_ms=0)
    for _ in range(3):  # drains after the create find nothing more to send
        await r.settle_all()
    [prospect] = r.sandbox.emails()["new@example.com"]
    [state] = r.states(prospect)
    assert (state["sequence_id"], state["mailbox_id"]) == (SEQ, MAILBOX)
    paths = [(m, p) for m, p, _ in r.log()]
    assert paths.index(("POST", "/api/v2/prospects")) < paths.index(
        ("POST", "/api/v2/sequenceStates")
    )
    assert r.enroll_calls() == [("POST", "/api/v2/sequenceStates", 201)]


async def test_entering_enrolls_once_after_the_fields_are_delivered(rig: Any) -> None:
    r: Rig = await rig()
    await r.member(1, "realized")
    await r.settle_all()
    [state] = r.states(1)
    assert (state["sequence_id"], state["mailbox_id"], state["state"]) == (SEQ, MAILBOX, "active")
    paths = [(m, p) for m, p, _ in r.log()]
    assert paths.index(("PATCH", "/api/v2/prospects/1")) < paths.index(
        ("POST", "/api/v2/sequenceStates")
    )
    # One call per enrollment: no lookup without an unknown outcome.
    assert r.enroll_calls() == [("POST", "/api/v2/sequenceStates", 201)]
    assert (await r.figures())["enrolled"] == 1
    record = await r.enroll.state(D, 1, SEQ)
    assert record is not None and record["st"] == "enrolled" and record["id"] == state["id"]


@pytest.mark.parametrize(("on_exit", "final"), [("finish", "finished"), ("pause", "paused")])
async def test_exiting_finishes_or_pauses_the_state(rig: Any, on_exit: str, final: str) -> None:
    r: Rig = await rig(rule={"on_exit": on_exit})
    await r.member(1, "realized")
    await r.settle_all()
    await r.member(1, "exited")
    await r.settle_all()
    [state] = r.states(1)
    assert state["state"] == final
    assert (await r.figures())[final] == 1


async def test_exit_on_none_leaves_the_state_alone(rig: Any) -> None:
    r: Rig = await rig()
    await r.member(1, "realized")
    await r.settle_all()
    await r.member(1, "exited")
    await r.settle_all()
    assert [s["state"] for s in r.states(1)] == ["active"]
    assert len(r.enroll_calls()) == 1


async def test_an_exit_before_the_enrollment_is_sent_cancels_it(rig: Any) -> None:
    r: Rig = await rig()
    # Enrollment paused: the entry is noted but not sent; then the prospect leaves.
    await r.enroll.pause(D, until_ms=int(time.time() * 1000) + 60_000, reason="test")
    await r.member(1, "realized")
    await r.settle_all()
    await r.member(1, "exited")
    await r.settle_all()
    await r.enroll.resume(D, now_ms=int(time.time() * 1000))
    await r.settle_all()
    assert r.states(1) == []
    assert r.enroll_calls() == []
    assert (await r.figures())["cancelled"] == 1


async def test_already_in_the_sequence_is_settled_not_failed(rig: Any) -> None:
    r: Rig = await rig()
    await r.member(1, "realized")
    await r.settle_all()
    await r.enroll.reset(D, 1, SEQ)  # as if enrolled by someone else
    await r.member(1, "existing")
    await r.settle_all()
    assert len(r.states(1)) == 1
    assert (await r.enroll.state(D, 1, SEQ) or {})["st"] == "already"
    assert (await r.figures())["already"] == 1
    assert list_failures(r.rclient, r.keys, destination=D) == []


async def test_reentry_without_reenroll_is_skipped(rig: Any) -> None:
    r: Rig = await rig(rule={"on_exit": "finish"})
    for status in ("realized", "exited", "realized"):
        await r.member(1, status)
        await r.settle_all()
    assert [s["state"] for s in r.states(1)] == ["finished"]
    assert (await r.figures())["reentry_skipped"] == 1


async def test_reentry_with_reenroll_enrolls_again(rig: Any) -> None:
    r: Rig = await rig(rule={"on_exit": "finish", "reenroll": True})
    r.sandbox.post(
        "/_sandbox/sequences",
        {"sequences": [{"id": SEQ, "name": "s", "permit_duplicate_prospects": "allow"}]},
    )
    for status in ("realized", "exited", "realized"):
        await r.member(1, status)
        await r.settle_all()
    assert sorted(s["state"] for s in r.states(1)) == ["active", "finished"]
    assert (await r.figures())["enrolled"] == 2


async def test_reentry_refused_by_the_ruleset_is_reported_as_already(rig: Any) -> None:
    r: Rig = await rig(rule={"on_exit": "finish", "reenroll": True})
    for status in ("realized", "exited", "realized"):
        await r.member(1, status)
        await r.settle_all()
    assert [s["state"] for s in r.states(1)] == ["finished"]
    assert (await r.figures())["already"] == 1


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("opted_out", "opted_out"),
        ("exclusive", "exclusive_sequence"),
        ("disabled", "sequence_disabled"),
    ],
)
async def test_a_refusal_is_a_failure_with_outreachs_reason(
    rig: Any, setup: str, reason: str
) -> None:
    r: Rig = await rig(opted_out=(1,) if setup == "opted_out" else ())
    if setup == "exclusive":
        r.sandbox.post(
            "/_sandbox/sequences",
            {
                "sequences": [
                    {"id": SEQ, "name": "s", "exclusive": True},
                    {"id": 8, "name": "other", "exclusive": True},
                ]
            },
        )
        await _enroll_directly(r, 1, 8)
    if setup == "disabled":
        disabled = {"id": SEQ, "name": "s", "enabled": False}
        r.sandbox.post("/_sandbox/sequences", {"sequences": [disabled]})
    await r.member(1, "realized")
    await r.member(2, "realized")
    if setup != "opted_out":
        await r.member(2, "exited")  # only prospect 1 in this test
    await r.settle_all()
    assert (await r.enroll.state(D, 1, SEQ) or {})["st"] == "refused"
    assert (await r.figures())[f"refused:{reason}"] == 1
    [failure] = [f for f in list_failures(r.rclient, r.keys, destination=D) if f["prospect"] == 1]
    assert failure["reason"] == f"enroll_{reason}" and failure["enrollment"]["sequence"] == SEQ
    assert failure["detail"]


async def _enroll_directly(r: Rig, prospect: int, sequence: int) -> None:
    body = (
        '{"data": {"type": "sequenceState", "relationships": {"prospect": {"data": {"type": '
        f'"prospect", "id": {prospect}}}}}, "sequence": {{"data": {{"type": "sequence", "id": '
        f'{sequence}}}}}, "mailbox": {{"data": {{"type": "mailbox", "id": {MAILBOX}}}}}}}}}}}'
    )
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{r.sandbox.api_url}/sequenceStates",
            data=body,
            headers={
                "Authorization": "Bearer test-token",
                "Content-Type": "application/vnd.api+json",
            },
        )
        assert resp.status == 201, await resp.text()


async def test_a_mailbox_that_cannot_send_pauses_enrollment_and_fields_flow(rig: Any) -> None:
    r: Rig = await rig()
    mailbox = {"id": MAILBOX, "user": USER, "email": "u@x.com", "default": True, "can_send": False}
    r.sandbox.post("/_sandbox/mailboxes", {"mailboxes": [mailbox]})
    await r.member(1, "realized")
    await r.settle_all()
    figures = await r.enroll.figures(D)
    assert figures.paused_until_ms > time.time() * 1000
    assert figures.paused_reason.startswith("mailbox_cannot_send")
    assert figures.waiting == 1 and r.states() == []
    await r.member(2, "realized")  # fields keep flowing while enrollment waits
    await r.settle_all()
    assert r.sandbox.prospects()[2][FIELD] == "realized"
    # Fixed and resumed: the waiting enrollments go out, once each.
    r.sandbox.post("/_sandbox/mailboxes", {"mailboxes": [{**mailbox, "can_send": True}]})
    await r.enroll.resume(D, now_ms=int(time.time() * 1000))
    await r.settle_all()
    assert sorted(s["prospect_id"] for s in r.states()) == [1, 2]


async def test_a_missing_scope_pauses_enrollment(rig: Any) -> None:
    r: Rig = await rig()
    r.sandbox.post("/_sandbox/config", {"static_token_scope": "prospects.all"})
    await r.member(1, "realized")
    await r.settle_all()
    figures = await r.enroll.figures(D)
    assert figures.paused_reason.startswith("scope_missing")
    snap = snapshot_from_status(await r.status())
    window = LastHour()
    found = conditions(snap, window, r.deliverer.settings, pause_since_s=None, now_s=time.time())
    assert [c.kind for c in found] == ["enrollment_paused"]
    assert r.sandbox.prospects()[1][FIELD] == "realized"
    assert (await r.enroll.state(D, 1, SEQ) or {})["st"] == "pending"


async def test_dry_run_calls_nothing_and_counts_what_it_would_do(rig: Any) -> None:
    r: Rig = await rig(dry_run=True)
    await r.member(1, "realized")
    await r.settle_all()
    assert r.enroll_calls() == [] and r.states() == []
    assert (await r.figures())["would_enroll"] == 1


@pytest.mark.parametrize("kind", ["drop_after_write", "5xx_after_write"])
async def test_an_unknown_outcome_is_looked_up_not_sent_again(rig: Any, kind: str) -> None:
    r: Rig = await rig()
    r.sandbox.arm_fault("POST /api/v2/sequenceStates", kind, count=1, status=502)
    await r.member(1, "realized")
    await r.settle_all()
    assert len(r.states(1)) == 1
    calls = r.enroll_calls()
    assert [c[:2] for c in calls] == [
        ("POST", "/api/v2/sequenceStates"),
        ("GET", "/api/v2/sequenceStates"),
    ]
    assert (await r.enroll.state(D, 1, SEQ) or {})["st"] == "enrolled"


async def test_a_worker_killed_between_answer_and_record_is_looked_up(rig: Any) -> None:
    r: Rig = await rig()
    await r.enroll.pause(D, until_ms=int(time.time() * 1000) + 60_000, reason="test")
    await r.member(1, "realized")
    await r.settle_all()
    await r.enroll.resume(D, now_ms=int(time.time() * 1000))
    # The dead worker: claimed under a short lease, enrolled, died before recording it.
    [job] = await r.enroll.claim(D, "dead", now_ms=int(time.time() * 1000), lease_ms=1, most=5)
    await _enroll_directly(r, job.prospect, job.sequence)
    await asyncio.sleep(0.01)
    await r.settle_all()
    assert len(r.states(1)) == 1
    assert [c[0] for c in r.enroll_calls()] == ["POST", "GET"]
    assert (await r.figures())["found_after_unknown"] == 1


async def test_the_connection_users_default_mailbox_is_looked_up_once(rig: Any) -> None:
    r: Rig = await rig(rule={"mailbox": "connection-user"})
    other = {"id": 46, "user": USER, "email": "v@x.com", "default": False}
    r.sandbox.post("/_sandbox/mailboxes", {"mailboxes": [other]})
    for prospect in (1, 2):
        await r.member(prospect, "realized")
    await r.settle_all()
    assert {s["mailbox_id"] for s in r.states()} == {MAILBOX}
    users = [x for x in r.log() if x[1].startswith("/api/v2/users/")]
    assert users == [("GET", f"/api/v2/users/{USER}", 200)]


async def test_the_owner_mailbox_is_the_prospect_owners_default_and_no_owner_is_refused(
    rig: Any,
) -> None:
    r: Rig = await rig(rule={"mailbox": "owner"})
    owners = {"id": 77, "user": "owner-1", "email": "o@x.com", "default": True}
    r.sandbox.post("/_sandbox/mailboxes", {"mailboxes": [owners]})
    seeded = [{"id": 1, "emails": ["p1@x.com"], "owner": "owner-1"}, {"id": 2, "emails": []}]
    r.sandbox.post("/_sandbox/prospects", {"prospects": seeded})
    for prospect in (1, 2):
        await r.member(prospect, "realized")
    await r.settle_all()
    [state] = r.states()
    assert (state["prospect_id"], state["mailbox_id"]) == (1, 77)
    [failure] = [f for f in list_failures(r.rclient, r.keys, destination=D) if f["prospect"] == 2]
    assert failure["reason"] == "enroll_no_owner" and "no owner" in failure["detail"]


async def test_status_and_metrics_show_enrollments_by_audience_and_reason(rig: Any) -> None:
    r: Rig = await rig(opted_out=(2,))
    for prospect in (1, 2):
        await r.member(prospect, "realized")
    await r.settle_all()
    doc = await r.status()
    [row] = doc.enrollment.audiences
    assert (row.audience, row.sequence) == ("aud", SEQ)
    assert row.counts == {"enrolled": 1, "refused:opted_out": 1}
    assert doc.enrollment.enabled and doc.enrollment.waiting == 0
    text = exposition([doc]).decode()
    assert (
        'outreach_sync_enrollments_total{audience="aud",destination="d",outcome="refused",'
        'reason="opted_out",sequence="7"} 1.0'
    ) in text
    assert 'outreach_sync_enrollment_paused{destination="d",reason=""} 0.0' in text
    page = render_destination(doc, data_url="/status/d/data", refresh_s=5)
    assert "Sequence enrollment" in page and "refused:opted_out 1" in page


def cli(prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **settings_env(prefix, None)},
        timeout=60,
    )


async def test_cli_shows_figures_resumes_and_replays_a_refusal(rig: Any, prefix: str) -> None:
    r: Rig = await rig(opted_out=(1,))
    await r.member(1, "realized")
    await r.settle_all()
    shown = cli(prefix, "enrollment", "status", D, "--json")
    assert shown.returncode == 0, shown.stderr
    [doc] = json.loads(shown.stdout)
    assert doc["audiences"][0]["counts"] == {"refused:opted_out": 1}
    # The prospect opted back in: replaying the failure enrolls them, once.
    r.sandbox.post("/_sandbox/reset")
    r.sandbox.post("/_sandbox/sequences", {"sequences": [{"id": SEQ, "name": "s"}]})
    mailbox = {"id": MAILBOX, "user": USER, "email": "u@x.com", "default": True}
    r.sandbox.post("/_sandbox/mailboxes", {"mailboxes": [mailbox]})
    replayed = cli(prefix, "failures", "replay", "-d", D, "--reason", "enroll_opted_out")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 failure" in replayed.stdout
    await r.settle_all()
    assert [s["state"] for s in r.states(1)] == ["active"]
    assert list_failures(r.rclient, r.keys, destination=D) == []
    await r.enroll.pause(D, until_ms=int(time.time() * 1000) + 60_000, reason="mailbox_x: y")
    assert "PAUSED" in cli(prefix, "enrollment", "status").stdout
    resumed = cli(prefix, "enrollment", "resume", D)
    assert resumed.returncode == 0 and not (await r.enroll.figures(D)).paused_until_ms


async def test_connecting_asks_for_sequence_scopes_only_when_a_destination_enrolls(
    rig: Any,
) -> None:
    r: Rig = await rig()
    settings = r.deliverer.settings
    asked = parse_qs(urlparse(authorize_url(settings, "s", sequences=True)).query)["scope"][0]
    assert asked.split() == [
        "prospects.all",
        "sequences.read",
        "sequenceStates.all",
        "mailboxes.read",
        "users.read",
    ]
    assert "sequenceStates" not in authorize_url(settings, "s")
    assert await connection_enrolls(r.store.redis, r.keys, "c")
    assert not await connection_enrolls(r.store.redis, r.keys, "other")


async def test_prospects_delivered_by_bulk_are_enrolled_after_their_batch(rig: Any) -> None:
    fast = {"poll_first_s": 0.05, "poll_max_s": 0.2, "timeout_s": 3.0}
    r: Rig = await rig(bulk={"enabled": True, "min_group": 3, "ids_per_call": 50, **fast})
    await r.member(100, "existing")  # warms the gate (bulk waits for Outreach's figure)
    await r.settle_all()
    for prospect in range(1, 9):
        await r.member(prospect, "realized")
    deadline = time.monotonic() + 10
    while len(r.states()) < 9 and time.monotonic() < deadline:
        await r.settle_all()
        await r.deliverer.wait_idle()
    assert sorted(s["prospect_id"] for s in r.states()) == [*range(1, 9), 100]
    paths = [(m, p) for m, p, _ in r.log()]
    batch = paths.index(("POST", "/api/v2/batches/actions/prospectsBulkModify"))
    first_enrollment = [i for i, x in enumerate(paths) if x[1] == "/api/v2/sequenceStates"][1]
    assert batch < first_enrollment
