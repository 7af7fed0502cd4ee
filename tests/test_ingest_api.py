"""Producers' ways in: the HTTP API (a real server), the CLI and the Celery task."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from app.api.app import make_app
from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import (
    ROOT,
    TEST_REDIS_URL,
    e2e_config,
    free_port,
    make_settings,
    profile,
    settings_env,
    wait_until,
)

#: The operator's key, which the producers' routes accept too (producer keys: test_producer_auth).
ADMIN_KEY = "ingest-test-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def api(prefix: str, rclient: redis.Redis) -> AsyncIterator[str]:
    publish_sync(rclient, Keys(prefix), e2e_config())
    env = settings_env(prefix, None, MAX_BODY_BYTES="200000", ADMIN_API_KEY=ADMIN_KEY)
    settings = make_settings(env)
    runner = web.AppRunner(make_app(settings))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1/destinations"
    await runner.cleanup()


async def post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=AUTH) as s,
        s.post(url, data=body, headers={"Content-Type": ctype}) as r,
    ):
        return r.status, await r.json()


async def test_one_profile_is_accepted_and_pending(
    api: str, rclient: redis.Redis, prefix: str
) -> None:
    status, doc = await post(
        f"{api}/e2e/profiles", json.dumps(profile("42", firstName="Ada")).encode()
    )
    assert status == 202
    assert doc["accepted"] == 1 and doc["profiles"][0]["prospects"] == [42]
    pending = rclient.hgetall(Keys(prefix).pending("e2e", 42))
    assert {k.decode(): json.loads(v) for k, v in pending.items()} == {
        "custom1": "realized",
        "firstName": "Ada",
    }


async def test_one_malformed_profile_in_a_thousand_rejects_only_itself(api: str) -> None:
    profiles: list[Any] = [profile(str(1000 + i)) for i in range(1000)]
    profiles[500] = profile("77", status="gone")
    status, doc = await post(f"{api}/e2e/profiles", json.dumps({"profiles": profiles}).encode())
    assert status == 202
    assert (doc["accepted"], doc["rejected"]) == (999, 1)
    bad = doc["profiles"][500]
    assert bad["outcome"] == "rejected" and "status" in bad["reason"] and "gone" in bad["reason"]


async def test_hostile_profiles_reject_only_themselves(api: str, rclient: redis.Redis) -> None:
    # Each of these once turned the whole batch into a 500: a lone surrogate (a string cut
    # in the middle of an emoji) failed in the merge; a 5,000-digit number and 3,000 levels
    # of nesting escaped the JSON parser.
    good = [json.dumps(profile(str(1000 + i))) for i in range(3)]
    cut_emoji = json.dumps(profile("21", firstName="Ada \ud83d"))
    huge_id = '{"identityMap": {"OutreachId": [{"id": ' + "9" * 5000 + "}]}}"
    deep = '{"attributes": {"x": ' + "[" * 3000 + "]" * 3000 + "}}"
    body = "\n".join([good[0], cut_emoji, huge_id, good[1], deep, good[2]])
    status, doc = await post(f"{api}/e2e/profiles", body.encode(), "application/x-ndjson")
    assert status == 202
    outcomes = [p["outcome"] for p in doc["profiles"]]
    # The cut name is left out of its profile with the reason; its audience goes ahead.
    assert outcomes == ["accepted", "accepted", "rejected", "accepted", "rejected", "accepted"]
    ((name, why),) = [
        (a["attribute"], a["reason"]) for a in doc["profiles"][1]["attributes_rejected"]
    ]
    assert name == "firstName" and "Unicode" in why
    reasons = [p.get("reason") or "" for p in doc["profiles"]]
    assert "line 3" in reasons[2] and "line 5" in reasons[4]
    # The same profiles as one JSON document.
    status, doc = await post(f"{api}/e2e/profiles", f"[{good[0]}, {cut_emoji}]".encode())
    assert status == 202 and (doc["accepted"], doc["rejected"]) == (2, 0)
    assert doc["attributes_rejected"] == 1


async def test_ndjson_lines_end_only_at_newlines_and_a_bom_is_ignored(api: str) -> None:
    # U+2028 is legal unescaped inside a JSON string (JSON.stringify writes it raw):
    # str.splitlines() used to cut the profile there and shift every later index.
    lines = [
        json.dumps(profile("5")),
        json.dumps(profile("6", firstName="one\u2028two\u0085three"), ensure_ascii=False),
        json.dumps(profile("7")),
    ]
    body = "\ufeff" + "\r\n".join(lines)
    status, doc = await post(f"{api}/e2e/profiles", body.encode(), "application/x-ndjson")
    assert status == 202 and doc["received"] == 3 and doc["accepted"] == 3
    one_doc = "\ufeff" + json.dumps({"profiles": [profile("8"), profile("9")]})
    status, doc = await post(f"{api}/e2e/profiles", one_doc.encode())
    assert status == 202 and doc["accepted"] == 2


async def test_an_unknown_charset_is_a_400_not_a_500(api: str) -> None:
    ctype = "application/json; charset=no-such-charset"
    status, doc = await post(f"{api}/e2e/profiles", json.dumps(profile("1")).encode(), ctype)
    assert status == 400 and doc["errors"][0]["title"] == "Bad encoding"


async def test_ndjson_with_a_broken_line_and_an_excluded_profile(api: str) -> None:
    lines = [
        json.dumps(profile("5")),
        "{not json",
        json.dumps(profile("abc")),
        json.dumps(profile("6", audience="not-in-this-destination")),
    ]
    status, doc = await post(
        f"{api}/e2e/profiles", "\n".join(lines).encode(), "application/x-ndjson"
    )
    assert status == 202
    outcomes = [p["outcome"] for p in doc["profiles"]]
    assert outcomes == ["accepted", "rejected", "excluded", "accepted"]
    assert "line 2" in doc["profiles"][1]["reason"]
    assert "OutreachId" in doc["profiles"][2]["reason"]
    assert doc["ignored_audiences"] == 1


async def test_unknown_destination_and_oversize_body_are_refused(api: str) -> None:
    status, doc = await post(f"{api}/nope/profiles", json.dumps(profile("1")).encode())
    assert status == 404 and "nope" in doc["errors"][0]["detail"]
    huge = json.dumps({"profiles": [profile(str(i)) for i in range(2000)]}).encode()
    assert len(huge) > 200_000
    status, doc = await post(f"{api}/e2e/profiles", huge)
    assert status == 413 and doc["errors"][0]["title"] == "Body too large"


async def test_a_destination_deleted_while_cached_accepts_nothing(
    api: str, prefix: str, rclient: redis.Redis
) -> None:
    # The API process has the destination in its registry cache when an admin (another
    # process) deletes it: the merge itself refuses, so no change is kept that no
    # dispatcher would ever drain.
    status, _ = await post(f"{api}/e2e/profiles", json.dumps(profile("1")).encode())
    assert status == 202
    rclient.delete(*rclient.scan_iter(match=f"{prefix}:{{e2e}}:*"))
    rclient.hdel(Keys(prefix).destinations(), "e2e")
    status, doc = await post(f"{api}/e2e/profiles", json.dumps(profile("2")).encode())
    assert status == 404 and doc["errors"][0]["title"] == "Unknown destination"
    assert list(rclient.scan_iter(match=f"{prefix}:{{e2e}}:*")) == []


async def test_redis_down_is_a_503_naming_the_store_with_retry_after(prefix: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY, REDIS_URL=dead)
    runner = web.AppRunner(make_app(make_settings(env)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base, answers = f"http://127.0.0.1:{port}/v1", []
    try:
        async with aiohttp.ClientSession(headers=AUTH) as s:
            body = json.dumps(profile("1"))
            # The producer's route (its key check needs Redis first) and an admin route
            # (authenticated without Redis, so the store itself fails inside the handler).
            for method, url in (
                ("POST", "/destinations/e2e/profiles"),
                ("GET", "/admin/destinations"),
            ):
                async with s.request(method, base + url, data=body, headers=JSON) as r:
                    answers.append((r.status, r.headers.get("Retry-After"), await r.json()))
    finally:
        await runner.cleanup()
    for status, retry_after, doc in answers:
        assert status == 503 and retry_after is not None and int(retry_after) > 0
        assert doc["errors"][0]["title"] == "Store unavailable"
        assert "Redis cannot be reached" in doc["errors"][0]["detail"]


async def test_status_reports_backlog_and_counters(api: str) -> None:
    await post(
        f"{api}/e2e/profiles", json.dumps({"profiles": [profile("1"), profile("x")]}).encode()
    )
    async with aiohttp.ClientSession(headers=AUTH) as s, s.get(f"{api}/e2e/status") as r:
        doc = await r.json()
    assert doc["pending"] == 1
    assert doc["counters"]["profiles_received"] == 2
    assert doc["counters"]["profiles_excluded"] == 1
    assert doc["quota"]["user"] == "test-user"
    assert (doc["quota"]["limit"], doc["quota"]["used"]) == (10000, 0)


def test_cli_ingest_reads_ndjson_from_stdin_and_summarises(
    prefix: str, rclient: redis.Redis
) -> None:
    publish_sync(rclient, Keys(prefix), e2e_config())
    env = {**settings_env(prefix, None)}
    text = "\n".join(json.dumps(profile(str(p))) for p in range(1, 2501)) + "\n{bad\n"
    out = subprocess.run(
        [sys.executable, "-m", "app", "ingest", "-", "-d", "e2e"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_base_env(), **env},
        check=True,
    )
    summary = json.loads(out.stdout)
    assert (summary["accepted"], summary["rejected"]) == (2500, 1)
    assert "2501" in out.stderr  # the progress bar's count
    assert "profile 2500: rejected" in out.stderr
    assert rclient.zcard(Keys(prefix).due("e2e")) == 2500


def test_cli_ingest_names_an_unknown_destination(prefix: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "ingest", "-", "-d", "missing"],
        input=json.dumps(profile("1")),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_base_env(), **settings_env(prefix, None)},
    )
    assert out.returncode == 2 and "unknown destination 'missing'" in out.stderr


def test_celery_ingest_task_records_profiles(
    prefix: str, rclient: redis.Redis, worker_factory: Callable[..., Any]
) -> None:
    env = settings_env(prefix, None)
    publish_sync(rclient, Keys(prefix), e2e_config())
    worker_factory(env, concurrency=1)
    code = (
        "from workers.tasks import ingest; import json, sys; "
        "ingest.delay('e2e', json.loads(sys.stdin.read()))"
    )
    profiles = [profile("11"), profile("12"), profile("bad-id")]
    subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(profiles),
        text=True,
        cwd=ROOT,
        env={**_base_env(), **env},
        check=True,
    )
    keys = Keys(prefix)
    wait_until(lambda: rclient.zcard(keys.due("e2e")) == 2, timeout_s=30, what="the task to run")
    counters = rclient.hgetall(keys.counters("e2e"))
    assert int(counters[b"profiles_excluded"]) == 1


def _base_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_bundled_sample_is_the_generators_output() -> None:
    from app.cli.demo import SAMPLE_FILE, demo_sample

    lines = SAMPLE_FILE.read_text().splitlines()
    assert [json.loads(line) for line in lines] == demo_sample().profiles


async def test_a_batch_large_enough_to_be_validated_on_a_thread_gives_the_same_result(
    prefix: str, rclient: redis.Redis
) -> None:
    import redis.asyncio as aioredis

    from app.ingest.batch import THREAD_ABOVE_PROFILES, ingest_async
    from app.store.prospects import ProspectStore

    keys = Keys(prefix)
    config = e2e_config()
    publish_sync(rclient, keys, config)
    n = THREAD_ABOVE_PROFILES + 500
    profiles: list[Any] = [profile(str(1 + i)) for i in range(n)]
    profiles[7] = profile("x")  # excluded, alone
    client = aioredis.from_url(TEST_REDIS_URL)
    try:
        store = ProspectStore(client, keys)
        batch = await ingest_async(store, config.destination("e2e"), profiles, window_ms=1000)
    finally:
        await client.aclose()
    assert (batch.report.accepted, batch.report.excluded) == (n - 1, 1)
    assert batch.results[7].outcome == "excluded"
    assert rclient.zcard(keys.due("e2e")) == n - 1
