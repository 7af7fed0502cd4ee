"""Dataflow metrics in Redis: one round trip per batch, totals and the hour alike, per audience;
the Lua scripts' own counts (no-op skips, retries); the lag; the status table and CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis

from app.cli.status_table import render_table
from app.core.keys import Keys
from app.ingest.batch import ingest_sync
from app.ops.status import BadQuery, collect_status, destination_status, parse_hours
from app.ops.status_doc import DestinationStatus, governing
from app.outreach.answers import parse_answer
from app.ratelimit.gate import gate_for
from app.ratelimit.governing import quota_limits
from app.store import counters as metrics
from app.store.prospects import ProspectStore, encode
from app.store.registry import Registry, publish_sync
from tests.support import ROOT, TEST_REDIS_URL, e2e_config, make_settings, settings_env

D = "e2e"


def profile(pid: object, **audiences: str) -> dict[str, object]:
    return {
        "identityMap": {"OutreachId": [{"id": pid}]} if pid is not None else {},
        "segmentMembership": {
            "ups": {a.replace("_", "-"): {"status": s} for a, s in audiences.items()}
        },
        "attributes": {"firstName": {"value": "Ada"}},
    }


def hashes(rclient: redis.Redis, keys: Keys, now_s: float) -> tuple[dict[str, int], dict[str, int]]:
    def ints(key: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in rclient.hgetall(key).items()}

    return ints(keys.counters(D)), ints(keys.metrics_hour(D, metrics.hour_of(now_s)))


def test_ingest_counts_per_destination_and_audience_in_total_and_hour(
    prefix: str, rclient: redis.Redis
) -> None:
    keys = Keys(prefix, metrics_retention_hours=2)
    config = e2e_config()
    publish_sync(rclient, keys, config)
    profiles = [
        profile("1", aud_1="realized", aud_2="exited"),
        profile("2", aud_1="existing", unmapped="realized"),
        profile(None, aud_1="realized"),
        profile("abc", aud_2="realized"),
        # Rejected: malformed (a time that is not one).
        {**profile("3", aud_1="realized"), "timestamp": "never"},
        "not a profile",
    ]
    ingest_sync(rclient, keys, config.destination(D), profiles, window_ms=1000)
    totals, hour = hashes(rclient, keys, time.time())
    assert totals["profiles_received"] == 6
    assert (totals["profiles_accepted"], totals["profiles_excluded"]) == (2, 2)
    assert totals["profiles_rejected"] == 2
    assert totals["excluded:no_identity"] == totals["excluded:bad_identity"] == 1
    assert totals["m1:received:realized"] == 3 and totals["m1:received:existing"] == 1
    assert totals["m2:received:exited"] == totals["m2:received:realized"] == 1
    assert totals["m1:excluded:no_identity"] == totals["m2:excluded:bad_identity"] == 1
    assert totals["m1:rejected"] == 1
    assert totals["audiences_ignored"] == 1
    # The hour holds the same counts (the merge's own field counts are totals only).
    assert hour == {k: v for k, v in totals.items() if not k.startswith("fields_")}
    ttl = rclient.ttl(keys.metrics_hour(D, metrics.hour_of(time.time())))
    assert 2 * 3600 < ttl <= 3 * 3600


async def test_noop_skips_and_retries_are_counted_by_the_lua_scripts(
    prefix: str, rclient: redis.Redis
) -> None:
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config(D))
    client = aioredis.from_url(TEST_REDIS_URL)
    store = ProspectStore(client, keys)
    now = int(time.time() * 1000)
    changes = {7: [("custom1", encode("realized"), 1), ("firstName", encode("Ada"), 1)]}
    try:
        await store.merge(D, changes, now_ms=now, window_ms=0)
        [c] = await store.claim(D, now_ms=now, lease_ms=30_000, batch=10, token="a")
        await store.settle(D, 7, "a", "retry", now_ms=now, window_ms=0, due_ms=now)
        [c] = await store.claim(D, now_ms=now, lease_ms=30_000, batch=10, token="b")
        assert c.attempts == 1  # the retry still counts the attempt for the backoff
        await store.settle(D, 7, "b", "ok", now_ms=now, window_ms=0, fields=tuple(c.fields))
        # The same values again: Outreach holds them, nothing is claimed.
        await store.merge(D, {7: [(f, v, 2) for f, v, _ in changes[7]]}, now_ms=now, window_ms=0)
        assert await store.claim(D, now_ms=now, lease_ms=30_000, batch=10, token="c") == []
    finally:
        await client.aclose()
    totals, hour = hashes(rclient, keys, now / 1000)
    for counts in (totals, hour):
        assert counts["retried"] == 1
        assert counts["prospects_noop"] == 1 and counts["fields_noop"] == 2
        assert counts["m1:noop"] == 1
    assert metrics.audience_counts(totals)[1].skipped_noop == 1


async def test_lag_is_the_oldest_first_seen_exact_or_sampled(
    prefix: str, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix)
    client = aioredis.from_url(TEST_REDIS_URL)
    try:
        assert await metrics.read_lag(client, keys, D) == metrics.Lag(None, True, 0)
        rclient.hset(keys.first_seen(D), mapping={str(p): 1_000_000 + p for p in range(50)})
        assert await metrics.read_lag(client, keys, D) == metrics.Lag(1_000_000, True, 50)
        monkeypatch.setattr(metrics, "LAG_EXACT_UP_TO", 10)
        sampled = await metrics.read_lag(client, keys, D)
        assert not sampled.exact and sampled.prospects == 50
        assert sampled.oldest_ms is not None and 1_000_000 <= sampled.oldest_ms < 1_000_050
        assert sampled.seconds(1_002_000) == pytest.approx(2.0, abs=0.06)
    finally:
        await client.aclose()


def test_window_sums_the_last_hours_only(prefix: str, rclient: redis.Redis) -> None:
    keys = Keys(prefix)
    now = time.time()
    metrics.write_sync(rclient, keys, D, {"profiles_received": 5}, now_s=now - 3 * 3600)
    metrics.write_sync(rclient, keys, D, {"profiles_received": 2, "m4:noop": 1}, now_s=now)

    async def window(hours: int) -> metrics.Window:
        client = aioredis.from_url(TEST_REDIS_URL)
        try:
            return await metrics.read_window(client, keys, D, hours=hours, now_s=now)
        finally:
            await client.aclose()

    assert asyncio.run(window(1)).total() == {"profiles_received": 2, "m4:noop": 1}
    four = asyncio.run(window(4))
    assert four.total()["profiles_received"] == 7 and len(four.hourly) == 4
    assert metrics.summary(four.hourly[0])["profiles_received"] == 5


def test_drain_tally_names_and_hours_query() -> None:
    tally = {"requests": 3, "delivered": 2, "m7:activated:realized": 2, "deferred": 0}
    assert metrics.drain_metrics(tally) == {
        "drain_requests": 3,
        "drain_delivered": 2,
        "m7:activated:realized": 2,
    }
    keys = Keys("x", metrics_retention_hours=48)
    assert parse_hours(None, keys=keys) == 24 and parse_hours("48", keys=keys) == 48
    for bad in ("0", "49", "-1", "2.5", "x"):
        with pytest.raises(BadQuery, match="hours must be a whole number from 1 to 48"):
            parse_hours(bad, keys=keys)


def test_status_table_says_what_was_left_out(prefix: str, rclient: redis.Redis) -> None:
    keys = Keys(prefix)
    config = e2e_config()
    publish_sync(rclient, keys, config)
    raw = profile("5", aud_1="realized", not_mapped="realized")
    raw["attributes"] = {"company": {"value": "Acme"}, "firstName": {"value": 5}}
    batch = ingest_sync(rclient, keys, config.destination(D), [raw], window_ms=60_000)
    assert batch.report.as_dict()["unmapped_attributes"] == {"company": 1}
    (doc,) = asyncio.run(collect_status(make_settings(settings_env(prefix, None))))
    assert (
        "left out: audiences ignored 1  attributes not mapped 1 (company 1)  attributes rejected 1"
    ) in render_table([doc])


def test_status_table_is_aligned_and_cli_json_is_kept(prefix: str, rclient: redis.Redis) -> None:
    env = settings_env(prefix, None)
    keys = Keys(prefix)
    config = e2e_config()
    publish_sync(rclient, keys, config)
    profiles = [profile(str(p), aud_1="realized", aud_12="exited") for p in range(1, 40)]
    ingest_sync(rclient, keys, config.destination(D), profiles, window_ms=60_000)
    docs = asyncio.run(collect_status(make_settings(env)))
    text = render_table(docs)
    lines = text.splitlines()
    assert lines[0].startswith("e2e (End to end)  enabled  connection conn")
    assert any("pending 39" in line and "lag" in line for line in lines)
    head = next(i for i, line in enumerate(lines) if "MAPPING ID" in line)
    rows = lines[head : head + 7]
    # Right-aligned numbers: every row's RECEIVED column ends where its header does.
    end = rows[0].index("RECEIVED") + len("RECEIVED")
    assert [r.split()[0] for r in rows[1:]] == [
        "aud-1",
        "aud-2",
        "aud-3",
        "aud-4",
        "aud-7",
        "aud-12",
    ]
    assert rows[1][:end].rstrip().endswith(" 39") and rows[6][:end].rstrip().endswith(" 39")
    cli = [sys.executable, "-m", "app", "status"]
    run_env = {**env, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*cli, "--json", D], cwd=ROOT, env=run_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    [doc] = json.loads(out.stdout)
    assert doc["counters"]["profiles_received"] == 39  # the old flat totals, still there
    assert doc["metrics"]["window"]["hours"] == 24
    bad = subprocess.run([*cli, "nope"], cwd=ROOT, env=run_env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown destination 'nope'" in bad.stderr


def test_an_audience_under_two_namespaces_counts_once_with_its_newest_status(
    prefix: str, rclient: redis.Redis
) -> None:
    keys = Keys(prefix)
    config = e2e_config()
    publish_sync(rclient, keys, config)
    both = {
        "identityMap": {"OutreachId": [{"id": "5"}]},
        "segmentMembership": {
            "ups": {"aud-1": {"status": "realized", "lastQualificationTime": 1_700_000_000_000}},
            "other": {"aud-1": {"status": "exited", "lastQualificationTime": 1_700_000_001_000}},
        },
    }
    excluded = {**both, "identityMap": {}}
    ingest_sync(rclient, keys, config.destination(D), [both, excluded], window_ms=1000)
    totals, _ = hashes(rclient, keys, time.time())
    # One change per profile (the newer evaluation, "exited"), so one count per profile.
    assert totals["m1:received:exited"] == 2 and "m1:received:realized" not in totals
    assert totals["m1:excluded:no_identity"] == 1


def test_status_failures_never_show_a_value_and_come_from_the_recent_index(
    prefix: str, rclient: redis.Redis
) -> None:
    from app.api.status_page import render_destination

    env = settings_env(prefix, None)
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    values = ["jane@acme.com", "+1 555 0100", "Zebedee", "4242", "bob@example.org"]
    # Written before the index existed: found by scanning the failures hash.
    old = {"id": "1:1000:custom1", "reason": "http_400", "fields": {"custom1": "realized"}}
    rclient.hset(keys.failures(D), old["id"], json.dumps({**old, "at_ms": 1000}))

    async def record() -> list[DestinationStatus]:
        client = aioredis.from_url(TEST_REDIS_URL)
        store = ProspectStore(client, keys)
        try:
            for n in range(3):
                rec = {
                    "id": f"7:{2000 + n}:emails",
                    "reason": "http_422",
                    "at_ms": 2000 + n,
                    "fields": {
                        "emails": [values[0]],
                        "mobilePhones": [values[1]],
                        "firstName": "Zebedee",
                        "n": 4242,
                    },
                    "title": "Validation Error",
                    "detail": f"emails: {values[0]} is already taken; {values[1]} and 4242 are "
                    f"invalid; Zebedee <{values[4]}> custom12",
                    "mapping_ids": [],
                }
                await store.record_failure(D, str(rec["id"]), rec)
            await client.hdel(keys.failures(D), "7:2001:emails")  # replayed: index tolerates it
            [doc] = await collect_status(make_settings(env), D, client=client, failures=20)
        finally:
            await client.aclose()
        return [doc]

    [only_old] = asyncio.run(collect_status(make_settings(env), D, failures=20))
    assert [f.id for f in only_old.recent_failures or []] == [old["id"]]
    [typed] = asyncio.run(record())
    doc = typed.as_json()
    failures = doc["recent_failures"]
    # From the index (newest first, the replayed one skipped); the pre-index record is older.
    assert [f["id"] for f in failures] == ["7:2002:emails", "7:2000:emails"]
    assert failures[0]["fields"] == ["emails", "firstName", "mobilePhones", "n"]
    assert "custom12" in failures[0]["detail"]  # the text around a value survives
    page = render_destination(typed, data_url="/status/e2e/data.json", refresh_s=0)
    for value in values:
        assert value not in json.dumps(doc), value
        assert value not in page, value
    assert rclient.zcard(keys.failures_recent(D)) == 3


def test_governing_limit_is_the_lower_and_the_configured_one_always_caps() -> None:
    assert governing(quota_limits(10_000, None)).model_dump(exclude={"why"}) == {
        "limit": 10_000,
        "source": "configured",
    }
    server = governing(quota_limits(1_000_000, 10_000))
    assert (server.limit, server.source) == (10_000, "reported")
    ours = governing(quota_limits(5_000, 10_000))
    assert (ours.limit, ours.source) == (5_000, "configured")
    assert "caps spending" in ours.why
    # Equal: the gate follows Outreach's count (its report governs, our window rests).
    assert governing(quota_limits(10_000, 10_000)).source == "reported"


@pytest.mark.parametrize(
    ("rate_limit", "governing", "source"),
    [("1000000/hour", 10_000, "Outreach's governs"), ("5000/hour", 5_000, "caps spending")],
)
def test_quota_shows_what_outreach_counts_as_spent_and_which_limit_governs(
    prefix: str, rclient: redis.Redis, rate_limit: str, governing: int, source: str
) -> None:
    """Issue 14 defect 10 / issue 15: after 400 requests Outreach reports 9600 of 10000 left;
    the figures say which count is Outreach's and which ours, and which limit caps spending."""
    from app.api.prometheus import exposition
    from app.api.status_page import render_destination

    env = settings_env(prefix, None)
    settings = make_settings(env)
    publish_sync(rclient, Keys(prefix), e2e_config(rate_limit=rate_limit))
    reset = time.time() + 1800
    told = {"X-RateLimit-Limit": "10000", "X-RateLimit-Remaining": "9600"}

    async def run() -> DestinationStatus:
        client = aioredis.from_url(TEST_REDIS_URL)
        try:
            gate = gate_for(client, settings)
            answer = parse_answer(200, {**told, "X-RateLimit-Reset": str(reset)}, None)
            await gate.observe("test-user", answer)
            [doc] = await collect_status(settings, D, client=client)
        finally:
            await client.aclose()
        return doc

    doc = asyncio.run(run())
    q = doc.quota
    assert q is not None
    assert (q.outreach_spent, q.reported_limit, q.server_remaining) == (400, 10_000, 9600)
    assert q.configured_limit == int(rate_limit.split("/")[0])
    assert q.governing_limit == governing
    text = render_table([doc])
    assert "Outreach's count: spent 400 of 10000  left 9600" in text
    assert f"our window: {q.used} of {q.configured_limit}" in text
    assert f"limit per hour: configured {q.configured_limit}  Outreach reports 10000" in text
    assert f"governing {governing} ({q.governing_why})" in text
    assert source in q.governing_why
    page = render_destination(doc, data_url="/x", refresh_s=0)
    assert 'data-k="quota.outreach_spent">400 of 10000<' in page
    assert f'data-k="quota.governing_limit">{governing} (' in page
    assert 'data-k="quota.reported_limit">10000<' in page
    metrics_text = exposition([doc]).decode()
    assert 'outreach_sync_quota_outreach_spent{user="test-user"} 400.0' in metrics_text
    assert f'outreach_sync_quota_governing_limit{{user="test-user"}} {governing}.0' in metrics_text


def test_a_status_read_samples_backlog_and_lag_into_the_hour_it_falls_in(
    prefix: str, rclient: redis.Redis
) -> None:
    keys = Keys(prefix)
    config = e2e_config()
    publish_sync(rclient, keys, config)
    profiles = [profile(str(p), aud_1="realized") for p in range(1, 4)]
    ingest_sync(rclient, keys, config.destination(D), profiles, window_ms=600_000)
    now = time.time()
    # Read as if five seconds later: the oldest change is about five seconds old.
    settings = make_settings(settings_env(prefix, None))

    async def read() -> DestinationStatus:
        client = aioredis.from_url(TEST_REDIS_URL)
        try:
            store, gate = ProspectStore(client, keys), gate_for(client, settings)
            registry = Registry(client, keys)
            doc = await destination_status(
                D, store=store, registry=registry, gate=gate, hours=3, now_s=now + 5
            )
        finally:
            await client.aclose()
        assert doc is not None
        return doc

    doc = asyncio.run(read())
    hour = doc.metrics.hourly[-1]
    assert (hour.pending, hour.in_flight) == (3, 0)
    assert hour.lag_s is not None and 4 <= hour.lag_s <= 7
    # Hours nobody read have no sample (not a zero).
    assert [h.pending for h in doc.metrics.hourly[:-1]] == [None, None]
    # Kept as long as the hour's counts, and never counted as dataflow.
    key = keys.metrics_hour(D, metrics.hour_of(now + 5))
    assert 0 < rclient.ttl(key) <= keys.metrics_ttl_s()
    assert doc.metrics.window.profiles_received == 3
    assert doc.as_json()["metrics"]["hourly"][-1]["pending"] == 3
