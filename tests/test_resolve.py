"""Identity resolution, in process: profiles known by email reach their prospects through
the real drain on real Redis against the sandbox over HTTP (its request log counts lookups,
creates and PATCHes; its control API tells how many prospects each email has)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from app.admin.destinations import Conflict, DestinationAdmin
from app.api.prometheus import exposition
from app.cli.status_table import render_table
from app.config.destinations import ConfigError, Destination, parse_config
from app.connections.oauth import AccessToken, RefreshOutcome
from app.core.keys import Keys
from app.delivery.drain import Deliverer
from app.ingest.batch import Batch, ingest_async
from app.ingest.producer import Producer
from app.ops.status import destination_status
from app.outreach.client import OutreachClient
from app.ratelimit.gate import gate_for
from app.resolve.emails import EmailStore
from app.store.failures import list_failures, replay
from app.store.prospects import ProspectStore
from app.store.registry import (
    DestinationBusy,
    Registry,
    publish_sync,
    stored_destination,
    swap_destination,
)
from tests.support import (
    AUDIENCES,
    TEST_REDIS_URL,
    Sandbox,
    e2e_config,
    make_settings,
    settings_env,
    wait_until,
)

D = "d"
AUDIENCE = "aud-1"  # mapped to custom1


class Tokens:
    async def current(self, conn_id: str) -> AccessToken | None:
        return AccessToken(conn_id, "test-token", 1)

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        return RefreshOutcome.REFRESHED


def profile(
    *,
    email: str | None = None,
    pid: int | None = None,
    status: str = "realized",
    at: str = "2026-11-20T10:00:00Z",
    **attributes: Any,
) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    if email is not None:
        ids["Email"] = [{"id": email}]
    if pid is not None:
        ids["OutreachId"] = [{"id": str(pid)}]
    return {
        "identityMap": ids,
        "segmentMembership": {"ups": {AUDIENCE: {"status": status, "lastQualificationTime": at}}},
        "attributes": {k: {"value": v} for k, v in attributes.items()},
    }


@dataclass
class Rig:
    sandbox: Sandbox
    store: ProspectStore
    emails: EmailStore
    keys: Keys
    rclient: redis.Redis
    deliverers: list[Deliverer]
    registry: Registry

    async def ingest(self, profiles: list[dict[str, Any]]) -> Batch:
        dest = await self.registry.destination(D)
        assert dest is not None
        return await ingest_async(self.store, dest, profiles, window_ms=0)

    async def settle(self, *, drains: int = 1, timeout_s: float = 20.0) -> Counter[str]:
        """Drain (``drains`` at once) until nothing waits: no email, no prospect."""
        stats: Counter[str] = Counter()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.gather(*(d.drain(D, stats=stats) for d in self.deliverers[:drains]))
            if await self.store.backlog(D) == (0, 0) and await self.emails.waiting(D) == (0, 0):
                return stats
            await asyncio.sleep(0.05)
        raise AssertionError(f"not settled: {await self.emails.waiting(D)}")

    def requests(self, method: str, path_part: str) -> list[dict[str, Any]]:
        log = self.sandbox.get("/_sandbox/requests?since=0")["requests"]
        return [r for r in log if r["method"] == method and path_part in r["path"]]

    def lookups(self) -> int:
        return sum(r["path"].endswith("/prospects") for r in self.requests("GET", "/prospects"))

    def creates(self) -> int:
        return sum(r["path"].endswith("/prospects") for r in self.requests("POST", "/prospects"))

    def patched(self) -> Counter[int]:
        return Counter(r["prospect_id"] for r in self.requests("PATCH", "/prospects/"))

    def by_email(self) -> dict[str, list[int]]:
        return self.sandbox.emails()


Factory = Callable[..., Any]


@pytest.fixture
async def rig(
    prefix: str, rclient: redis.Redis, sandbox_factory: Callable[..., Sandbox]
) -> AsyncIterator[Factory]:
    made: list[tuple[aioredis.Redis, aiohttp.ClientSession]] = []

    async def make(
        *sandbox_args: str, drains: int = 1, env: dict[str, str] | None = None, **identity: Any
    ) -> Rig:
        sandbox = sandbox_factory(*sandbox_args)
        extra = {"COALESCE_WINDOW_MS": "0", "RETRY_BACKOFF_BASE_S": "0.05", **(env or {})}
        env = settings_env(prefix, sandbox, **extra)
        settings = make_settings(env)
        config = {
            "connections": [{"id": "c", "user": "test-user", "access_token": "test-token"}],
            "destinations": [
                {
                    "id": D,
                    "name": D,
                    "connection": "c",
                    "audiences": {AUDIENCE: 1},
                    "attributes": {"firstName": "firstName"},
                    "identity": {"match": ["OutreachId", "Email"], **identity},
                }
            ],
        }
        publish_sync(rclient, Keys(prefix), parse_config(config))
        aclient = aioredis.from_url(TEST_REDIS_URL)
        session = aiohttp.ClientSession()
        made.append((aclient, session))
        store = ProspectStore(aclient, settings.keys)
        registry = Registry(aclient, settings.keys)
        client = OutreachClient(session, api_url=settings.outreach_api_url, timeout_s=2)
        deliverers = [
            Deliverer(
                store=store,
                registry=registry,
                client=client,
                gate=gate_for(aclient, settings),
                settings=settings,
                refresher=Tokens(),
            )
            for _ in range(drains)
        ]
        return Rig(
            sandbox,
            store,
            EmailStore(aclient, settings.keys),
            settings.keys,
            rclient,
            deliverers,
            registry,
        )

    yield make
    for aclient, session in made:
        await session.close()
        await aclient.aclose()


async def test_a_profile_with_an_outreach_id_goes_as_today_without_a_lookup(rig: Factory) -> None:
    r = await rig()
    [pid] = r.sandbox.seed([{"emails": ["ada@example.com"]}])
    batch = await r.ingest([profile(email="ada@example.com", pid=pid, firstName="Ada")])
    assert batch.report.accepted == 1
    await r.settle()
    assert r.lookups() == 0
    assert r.patched() == Counter({pid: 1})
    assert r.sandbox.prospects()[pid]["custom1"] == "realized"


async def test_email_only_profiles_are_looked_up_in_batches_then_from_the_cache(
    rig: Factory,
) -> None:
    r = await rig()
    emails = [f"p{i}@example.com" for i in range(120)]
    ids = r.sandbox.seed([{"emails": [e]} for e in emails])
    # Sent in mixed case with spaces: normalised before lookup and coalescing.
    batch = await r.ingest(
        [profile(email=f" {e.upper()} ", firstName=f"N{i}") for i, e in enumerate(emails)]
    )
    assert batch.report.accepted == 120 and batch.report.excluded == 0
    stats = await r.settle()
    assert r.lookups() == 3  # 50 + 50 + 20
    assert stats["resolve_lookups"] == 3
    held = r.sandbox.prospects()
    assert all(held[p]["custom1"] == "realized" for p in ids)
    assert [held[p]["firstName"] for p in ids] == [f"N{i}" for i in range(120)]
    assert r.patched() == Counter({p: 1 for p in ids})
    # A second activation: every email is remembered, so no lookup is spent.
    await r.ingest([profile(email=e, status="exited", at="2026-11-21T10:00:00Z") for e in emails])
    stats = await r.settle()
    assert r.lookups() == 3 and stats["resolve_cache_hits"] == 120
    assert all(r.sandbox.prospects()[p]["custom1"] == "exited" for p in ids)
    doc = await destination_status(D, store=r.store, registry=r.registry, gate=r.deliverers[0].gate)
    assert doc is not None
    shown = doc.resolve
    assert (shown.by_lookup, shown.lookups, shown.from_cache) == (120, 3, 120)
    assert (shown.waiting, shown.not_found, shown.created) == (0, 0, 0)
    assert "by lookup 120 (3 lookups)" in render_table([doc])
    assert b'outreach_sync_resolve_lookups_total{destination="d"} 3.0' in exposition([doc])


async def test_a_newer_change_made_while_the_email_was_resolved_wins(rig: Factory) -> None:
    r = await rig()
    [pid] = r.sandbox.seed([{"emails": ["ada@example.com"]}])
    await r.ingest([profile(email="ada@example.com", at="2026-11-20T10:00:00Z")])
    doc = await destination_status(D, store=r.store, registry=r.registry, gate=r.deliverers[0].gate)
    assert doc is not None and doc.resolve.waiting == 1
    assert doc.resolve.oldest_waiting_s is not None
    claimed = await r.emails.claim(
        D, now_ms=int(time.time() * 1000), lease_ms=60_000, batch=50, token="t1"
    )
    [w] = claimed
    # Meanwhile: a newer change by email, and an older one by id, each in its own store.
    await r.ingest([profile(email="ada@example.com", status="exited", at="2026-11-20T12:00:00Z")])
    await r.ingest(
        [profile(pid=pid, status="existing", at="2026-11-20T09:00:00Z", firstName="Old")]
    )
    assert await r.emails.adopt(D, w, [pid], "t1", now_ms=int(time.time() * 1000)) == 1
    await r.settle()
    held = r.sandbox.prospects()[pid]
    assert held["custom1"] == "exited"  # the newest evaluation, whichever way it came
    assert held["firstName"] == "Old"  # nothing lost either
    assert sum(r.patched().values()) == 1


async def test_missing_prospects_are_created_once_even_with_two_drains_racing(
    rig: Factory,
) -> None:
    # Small batches, so both drains resolve at once.
    r = await rig(drains=2, on_missing="create", env={"RESOLVE_BATCH": "4"})
    emails = [f"new{i}@example.com" for i in range(30)]
    await r.ingest([profile(email=e, firstName=f"N{i}") for i, e in enumerate(emails)])
    await r.settle(drains=2)
    found = r.by_email()
    assert all(len(found[e]) == 1 for e in emails)
    assert r.creates() == 30
    assert not r.patched()  # the create carried every field: no PATCH after it
    held = r.sandbox.prospects()
    assert {held[found[e][0]]["firstName"] for e in emails} == {f"N{i}" for i in range(30)}
    assert all(held[found[e][0]]["custom1"] == "realized" for e in emails)


@pytest.mark.parametrize("fault", ["drop_after_write", "5xx_after_write"])
async def test_a_create_whose_answer_is_lost_is_settled_by_a_lookup(
    rig: Factory, fault: str
) -> None:
    r = await rig(on_missing="create")
    r.sandbox.arm_fault("POST /api/v2/prospects", fault, count=1, status=503)
    await r.ingest([profile(email="lost@example.com", firstName="Lost")])
    await r.settle()
    [pid] = r.by_email()["lost@example.com"]
    [rule] = r.sandbox.get("/_sandbox/faults")["rules"]
    assert rule["fired"] == 1
    assert r.creates() == 1  # looked up after the unknown outcome: never created twice
    assert r.sandbox.prospects()[pid]["firstName"] == "Lost"


async def test_a_create_refused_as_already_taken_looks_up_and_patches(rig: Factory) -> None:
    r = await rig(on_missing="create")
    # The cache still says "no prospect" while someone created it meanwhile.
    await r.emails.remember(D, {"late@example.com": []}, found_s=60, missing_s=60)
    [pid] = r.sandbox.seed([{"emails": ["late@example.com"]}])
    await r.ingest([profile(email="late@example.com", firstName="Late")])
    await r.settle()
    assert r.by_email()["late@example.com"] == [pid]
    assert r.sandbox.prospects()[pid]["firstName"] == "Late"
    assert r.patched() == Counter({pid: 1})


@pytest.mark.parametrize("mode", ["skip", "all", "newest"])
async def test_an_email_several_prospects_share(rig: Factory, mode: str) -> None:
    r = await rig("--purposeful-duplicates", on_ambiguous=mode)
    old, new = r.sandbox.seed(
        [
            {"emails": ["twin@example.com"], "updated_at": "2026-01-01T00:00:00Z"},
            {"emails": ["twin@example.com"], "updated_at": "2026-06-01T00:00:00Z"},
        ]
    )
    await r.ingest([profile(email="twin@example.com", firstName="Twin")])
    await r.settle()
    expected = {"skip": set(), "all": {old, new}, "newest": {new}}[mode]
    assert set(r.patched()) == expected
    if mode == "skip":
        [failure] = list_failures(r.rclient, r.keys, destination=D)
        assert str(old) in failure["detail"] and str(new) in failure["detail"]


async def test_a_hashed_email_is_rejected_with_the_reason(rig: Factory) -> None:
    r = await rig()
    hashed = "a" * 64
    batch = await r.ingest([profile(email=hashed)])
    [problem] = batch.report.problems
    assert problem.outcome == "rejected" and "hash" in (problem.reason or "")
    only_hashed = profile()
    only_hashed["identityMap"] = {"Email_LC_SHA256": [{"id": hashed}]}
    [problem] = (await r.ingest([only_hashed])).report.problems
    assert problem.outcome == "rejected"
    assert "Email_LC_SHA256: hashed emails cannot be looked up" in (problem.reason or "")
    config = {
        "connections": [{"id": "c", "access_token": "x"}],
        "destinations": [
            {"id": "x", "name": "x", "connection": "c", "identity": {"match": ["Email_LC_SHA256"]}}
        ],
    }
    with pytest.raises(ConfigError, match="hash"):
        parse_config(config)


async def test_no_prospect_is_a_failure_that_replay_delivers_once_it_exists(
    rig: Factory,
) -> None:
    r = await rig()
    await r.ingest([profile(email="later@example.com", firstName="Later")])
    await r.settle()
    [failure] = list_failures(r.rclient, r.keys, destination=D)
    assert failure["reason"] == "no prospect with this email"
    assert failure["email"] == "later@example.com"
    [pid] = r.sandbox.seed([{"emails": ["later@example.com"]}])
    result = replay(r.rclient, r.keys, destination=D, window_ms=0)
    assert result.replayed == 1
    await r.settle()
    assert r.sandbox.prospects()[pid]["firstName"] == "Later"
    assert not list_failures(r.rclient, r.keys, destination=D)


def test_the_default_match_is_the_outreach_id() -> None:
    dest = Destination(id="x", name="x", connection="c")
    assert dest.match == ("OutreachId",)


async def test_a_remembered_prospect_that_is_gone_is_forgotten_and_resolved_again(
    rig: Factory,
) -> None:
    r = await rig()
    [pid] = r.sandbox.seed([{"emails": ["moved@example.com"]}])
    gone = 50_000_000  # beyond the sandbox's range of existing ids
    await r.emails.remember(D, {"moved@example.com": [(gone, "")]}, found_s=60, missing_s=60)
    await r.ingest([profile(email="moved@example.com", firstName="Moved")])
    stats = await r.settle()
    assert stats["resolve_cache_hits"] == 1 and stats["resolve_gone"] == 1
    assert r.lookups() == 1  # the 404 forgot the cached id: looked up once
    assert r.sandbox.prospects()[pid]["firstName"] == "Moved"
    assert r.patched() == Counter({gone: 1, pid: 1})
    assert not list_failures(r.rclient, r.keys, destination=D)


async def test_a_worker_killed_after_its_create_leaves_an_intent_settled_by_a_lookup(
    rig: Factory,
) -> None:
    r = await rig(on_missing="create", env={"LEASE_MS": "3000", "OUTREACH_TIMEOUT_S": "1"})
    await r.ingest([profile(email="killed@example.com", firstName="K")])
    now = int(time.time() * 1000)
    [w] = await r.emails.claim(D, now_ms=now, lease_ms=50, batch=5, token="dead")
    # The dead worker had looked it up (not found), recorded its intent, and Outreach made
    # the prospect; the worker died before it recorded the answer.
    await r.emails.remember(D, {w.email: []}, found_s=600, missing_s=600)
    assert await r.emails.intend(D, w.email, "dead", now_ms=now - 5000, lease_ms=50) == "go"
    [pid] = r.sandbox.seed([{"emails": ["killed@example.com"]}])
    await asyncio.sleep(0.1)  # its lease ends
    await r.settle()
    assert r.by_email()["killed@example.com"] == [pid]
    assert r.creates() == 0 and r.lookups() == 1
    assert r.sandbox.prospects()[pid]["firstName"] == "K"


@pytest.mark.integration
def test_real_workers_deliver_profiles_known_only_by_email(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
) -> None:
    """The dispatcher starts drains for emails due (nothing else is due), the drain resolves
    and creates them, and the senders deliver: with real worker processes."""
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="200")
    identity = {"match": ["OutreachId", "Email"], "on_missing": "create"}
    publish_sync(rclient, Keys(prefix), e2e_config(identity=identity))
    worker_factory(env, name="a")
    existing = [f"known{i}@example.com" for i in range(40)]
    ids = sandbox.seed([{"emails": [e]} for e in existing])
    fresh = [f"fresh{i}@example.com" for i in range(10)]
    audience = next(iter(AUDIENCES))
    profiles = [
        {
            "identityMap": {"Email": [{"id": e}]},
            "segmentMembership": {"ups": {audience: {"status": "realized"}}},
            "attributes": {"firstName": {"value": e.split("@")[0]}},
        }
        for e in existing + fresh
    ]
    report = Producer(make_settings(env)).send("e2e", profiles).report
    assert report.accepted == 50

    def landed() -> bool:
        found, held = sandbox.emails(), sandbox.prospects()
        return all(
            len(found.get(e, [])) == 1 and held[found[e][0]].get("firstName") == e.split("@")[0]
            for e in existing + fresh
        )

    wait_until(landed, timeout_s=30, what="every email's prospect to be updated", every_s=0.2)
    assert sorted(sandbox.emails()[e][0] for e in existing) == sorted(ids)


async def test_a_create_refused_as_taken_that_no_lookup_finds_fails_rather_than_loops(
    rig: Factory,
) -> None:
    # Outreach's filter matches case-sensitively here, and the prospect's stored email has
    # capitals: the lookup misses, the create is refused as taken.
    r = await rig("--lookup-case-sensitive", on_missing="create")
    r.sandbox.seed([{"emails": ["Case@Example.com"]}])
    await r.ingest([profile(email="case@example.com", firstName="C")])
    await r.settle()
    [failure] = list_failures(r.rclient, r.keys, destination=D)
    assert failure["reason"] == "create_taken_not_found"
    assert r.creates() == 1 and len(r.by_email()["case@example.com"]) == 1


async def test_deleting_a_destination_is_refused_while_changes_wait_for_resolution(
    rig: Factory,
) -> None:
    r = await rig()
    await r.ingest([profile(email="waiting@example.com")])
    admin = DestinationAdmin(r.store.redis, r.keys)
    with pytest.raises(Conflict, match="1 prospect"):
        await admin.delete(D)
    # And the deletion's own atomic check (a change may arrive between count and delete).
    raw = await stored_destination(r.store.redis, r.keys, D)
    with pytest.raises(DestinationBusy):
        await swap_destination(r.store.redis, r.keys, D, expected=raw, new=None, only_if_idle=True)
    assert await r.emails.waiting(D) == (1, 0)


async def test_lookups_follow_every_page_of_an_answer(rig: Factory) -> None:
    r = await rig("--page-size-max", "10")
    emails = [f"paged{i}@example.com" for i in range(25)]
    ids = r.sandbox.seed([{"emails": [e]} for e in emails])
    await r.ingest([profile(email=e) for e in emails])
    stats = await r.settle()
    assert r.lookups() == 3 and stats["resolve_looked_up"] == 25  # pages of 10, 10, 5
    assert r.patched() == Counter({p: 1 for p in ids})


async def test_an_outreach_refusing_email_lists_is_asked_one_email_at_a_time(rig: Factory) -> None:
    r = await rig("--no-lookup-lists")
    emails = [f"single{i}@example.com" for i in range(5)]
    ids = r.sandbox.seed([{"emails": [e]} for e in emails])
    await r.ingest([profile(email=e) for e in emails])
    await r.settle()
    assert r.lookups() == 1 + 5  # the refused list, then one per email
    assert r.patched() == Counter({p: 1 for p in ids})
    await r.ingest([profile(email=f"later{i}@example.com") for i in range(2)])
    await r.settle()
    assert r.lookups() == 6 + 2  # no list is tried again on that connection
