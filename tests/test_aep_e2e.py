"""AEP's exports against the real service: the answers AEP acts on, and Mapping IDs typed in
AEP reaching ``customN`` in Outreach (rendered template -> HTTP with a bearer producer key ->
real workers -> the sandbox)."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from app.admin.producer_keys import ProducerKeys
from app.aep import package
from app.aep.pebble import render_request
from app.api.app import make_app
from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import (
    ALIASES,
    PROFILES,
    TEST_REDIS_URL,
    LocalRedis,
    Sandbox,
    e2e_config,
    free_port,
    make_settings,
    settings_env,
    wait_until,
)

D = "aep"
#: Codes AEP retries (best effort: twice, after 15 s and 30 s); any other it never retries.
AEP_RETRIES = {403, 408, 409, 429, 500, 502, 503, 504}
Answer = tuple[int, dict[str, str], Any]


def aep_body(profiles: list[dict[str, Any]], aliases: dict[str, Any] = ALIASES) -> bytes:
    """What AEP POSTs: the packaged template rendered over ``profiles``."""
    context = {"namespaceSegmentAliases": aliases}
    return render_request(package.packaged_template(), profiles, context).encode()


async def export(url: str, key: str, body: bytes) -> Answer:
    """One export call as AEP makes it: POST, JSON, the user's token as a bearer token."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def serve(settings_extra: dict[str, str], prefix: str) -> tuple[web.AppRunner, str]:
    settings = make_settings(settings_env(prefix, None, **settings_extra))
    runner = web.AppRunner(make_app(settings))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1/destinations"


async def new_key(redis_url: str, prefix: str, *, all_destinations: bool = False) -> str:
    client = aioredis.from_url(redis_url)
    try:
        _, text = await ProducerKeys(client, Keys(prefix)).create(
            "aep", None if all_destinations else [D]
        )
    finally:
        await client.aclose()
    return text


@pytest.fixture
async def api(prefix: str, rclient: redis.Redis) -> AsyncIterator[str]:
    publish_sync(rclient, Keys(prefix), e2e_config(D, audiences={}, mapping_ids="data"))
    runner, url = await serve({"PRODUCER_RATE_LIMIT": "5/minute"}, prefix)
    yield url
    await runner.cleanup()


def pending(rclient: redis.Redis, prefix: str, pid: int) -> dict[str, Any]:
    raw = rclient.hgetall(Keys(prefix).pending(D, pid))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


# The answers, one class each --------------------------------------------------------------


async def test_accepted_export_is_a_2xx_and_stored(
    api: str, prefix: str, rclient: redis.Redis
) -> None:
    key = await new_key(TEST_REDIS_URL, prefix)
    status, _, doc = await export(f"{api}/{D}/profiles", key, aep_body(PROFILES))
    assert 200 <= status < 300
    assert doc["accepted"] == 5 and doc["excluded"] == 1
    assert pending(rclient, prefix, 1004) == {"custom11": "exited"}


async def test_data_we_can_never_take_is_a_code_aep_does_not_retry_with_the_reason(
    api: str, prefix: str
) -> None:
    key = await new_key(TEST_REDIS_URL, prefix)
    everywhere = await new_key(TEST_REDIS_URL, prefix, all_destinations=True)
    url = f"{api}/{D}/profiles"
    bad_alias = copy.deepcopy(ALIASES)
    bad_alias["ups"]["788d8874-8007-4253-92b7-ee6b6c20c6f3"] = "seven"
    only_bad = [{**PROFILES[1], "identityMap": {"OutreachId": [{"id": "9"}]}}]
    answers = {
        "invalid Mapping ID": await export(url, key, aep_body(only_bad, bad_alias)),
        "no OutreachId": await export(url, key, aep_body(PROFILES[1:2])),
        "not JSON": await export(url, key, b'{"profiles": [{"identityMap": '),
        "unknown destination": await export(f"{api}/nope/profiles", everywhere, aep_body(PROFILES)),
        "unknown key": await export(url, "not-a-key", aep_body(PROFILES)),
    }
    for what, (status, _, doc) in answers.items():
        assert status >= 400 and status not in AEP_RETRIES, (what, status)
        assert json.dumps(doc), what  # every refusal says why
    # A key whose scope lacks the destination is configuration, not data: 403, which AEP
    # retries twice before dropping (docs/aep.md), time enough to fix the key's scope.
    assert (await export(f"{api}/nope/profiles", key, aep_body(PROFILES)))[0] == 403
    invalid = answers["invalid Mapping ID"][2]["profiles"][0]
    assert invalid["outcome"] == "rejected"
    assert "'seven' is not a mapping ID" in invalid["reason"]


async def test_overload_is_a_429_with_retry_after_that_aep_retries(api: str, prefix: str) -> None:
    key = await new_key(TEST_REDIS_URL, prefix)
    url = f"{api}/{D}/profiles"
    statuses = [(await export(url, key, aep_body(PROFILES[:1])))[0] for _ in range(5)]
    status, headers, _ = await export(url, key, aep_body(PROFILES[:1]))
    assert set(statuses) == {202} and status == 429 and status in AEP_RETRIES
    assert int(headers["Retry-After"]) > 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
async def test_redis_down_is_a_code_aep_retries_and_the_retry_lands(
    prefix: str, tmp_path: Path
) -> None:
    server = LocalRedis(tmp_path)
    server.start()
    runner = None
    try:
        client = redis.Redis.from_url(server.url)
        publish_sync(client, Keys(prefix), e2e_config(D, audiences={}, mapping_ids="data"))
        key = await new_key(server.url, prefix)
        runner, api = await serve({"REDIS_URL": server.url}, prefix)
        server.kill()
        status, headers, _ = await export(f"{api}/{D}/profiles", key, aep_body(PROFILES))
        assert status in AEP_RETRIES and status == 503 and int(headers["Retry-After"]) > 0
        server.start()  # AOF: what was there comes back
        client = redis.Redis.from_url(server.url)
        status, _, _ = await export(f"{api}/{D}/profiles", key, aep_body(PROFILES))
        assert status == 202
        raw = client.hgetall(Keys(prefix).pending(D, 1004))
        assert {k.decode(): json.loads(v) for k, v in raw.items()} == {"custom11": "exited"}
    finally:
        if runner is not None:
            await runner.cleanup()
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


async def test_shutdown_never_answers_2xx_for_data_not_stored(
    prefix: str, rclient: redis.Redis
) -> None:
    publish_sync(rclient, Keys(prefix), e2e_config(D, audiences={}, mapping_ids="data"))
    key = await new_key(TEST_REDIS_URL, prefix)
    runner, api = await serve({}, prefix)
    many = [
        {**PROFILES[3], "identityMap": {"OutreachId": [{"id": str(5000 + i)}]}} for i in range(3000)
    ]
    body = aep_body(many)
    call = asyncio.create_task(export(f"{api}/{D}/profiles", key, body))
    # In flight: the server has begun storing it (a fixed sleep could stop the server before
    # the request even reached it, which proves nothing about answering).
    for _ in range(1000):
        if call.done() or pending(rclient, prefix, 5000):
            break
        await asyncio.sleep(0.01)
    await runner.cleanup()  # stop listening, finish what is in flight, then close
    try:
        status: int | None = (await call)[0]
    except aiohttp.ClientError:
        status = None  # no answer: AEP sends again
    stored = sum(1 for i in range(3000) if pending(rclient, prefix, 5000 + i))
    print(f"\nshutdown with a request in flight: answer {status}, stored {stored} of 3000")
    # Finishing what is in flight means answering it: no answer at all would prove nothing.
    assert status is not None, f"the request in flight got no answer (stored {stored})"
    assert status >= 300 or stored == 3000, (status, stored)
    after: int | None
    try:
        after = (await export(f"{api}/{D}/profiles", key, aep_body(PROFILES)))[0]
    except aiohttp.ClientError:
        after = None
    assert after is None


async def test_what_an_export_leaves_out_is_said_in_the_answer_counted_and_exported(
    api: str, prefix: str, rclient: redis.Redis
) -> None:
    key = await new_key(TEST_REDIS_URL, prefix)
    # A target offered by the package (company) that the destination does not map, two
    # audiences without a Mapping ID (no alias), a predefined attribute as a plain value.
    profile = {
        "identityMap": {"OutreachId": [{"id": "2001"}]},
        "segmentMembership": {
            "ups": {
                "788d8874-8007-4253-92b7-ee6b6c20c6f3": {"status": "realized"},
                "no-alias-1": {"status": "realized"},
                "no-alias-2": {"status": "exited"},
            }
        },
        "attributes": {"firstName": "Plain", "company": {"value": "Acme"}, "title": {}},
    }
    status, _, doc = await export(f"{api}/{D}/profiles", key, aep_body([profile]))
    assert (status, doc["accepted"], doc["ignored_audiences"]) == (202, 1, 2)
    assert doc["unmapped_attributes"] == {"company": 1}
    assert pending(rclient, prefix, 2001) == {"custom7": "realized", "firstName": "Plain"}

    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s, s.get(f"{api}/{D}/status", headers=headers) as r:
        totals = (await r.json())["metrics"]["totals"]
    assert (totals["audiences_ignored"], totals["attributes_unmapped"]) == (2, 1)
    assert totals["unmapped_by_attribute"] == {"company": 1}
    base = api.removesuffix("/v1/destinations")
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        metrics = await r.text()  # open: no ADMIN_API_KEY in this test's settings
    assert f'outreach_sync_audiences_ignored_total{{destination="{D}"}} 2.0' in metrics
    series = f'outreach_sync_attributes_unmapped_total{{attribute="company",destination="{D}"}}'
    assert f"{series} 1.0" in metrics
    async with aiohttp.ClientSession() as s, s.get(f"{base}/status/{D}") as r:
        page = await r.text()
    assert "Attributes left out (not mapped)" in page and "company 1" in page


async def test_the_documentation_link_aep_shows_answers_with_the_guide(api: str) -> None:
    base = api.removesuffix("/v1/destinations")
    async with aiohttp.ClientSession() as s:
        async with s.get(base + package.DOCS_PATH) as r:
            plain = (r.status, r.headers["Content-Type"], await r.text())
        markdown = {"Accept": "text/markdown"}
        async with s.get(base + package.DOCS_PATH, headers=markdown) as r:
            labelled = r.headers["Content-Type"]
    assert plain[:2] == (200, "text/plain; charset=utf-8")
    assert plain[2].startswith("# Adobe Experience Platform")
    assert labelled == "text/markdown; charset=utf-8"


# End to end ------------------------------------------------------------------------------


@pytest.mark.integration
async def test_mapping_ids_typed_in_aep_reach_custom_fields_in_outreach(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
) -> None:
    env = settings_env(prefix, sandbox)
    publish_sync(rclient, Keys(prefix), e2e_config(D, audiences={}, mapping_ids="data"))
    worker_factory(env, name="aep")
    key = await new_key(TEST_REDIS_URL, prefix)
    runner, api = await serve({"OUTREACH_API_URL": sandbox.api_url}, prefix)
    url = f"{api}/{D}/profiles"
    try:
        status, _, _ = await export(url, key, aep_body(PROFILES))
        assert status == 202
        wave1 = {
            1001: {
                "custom7": "realized",
                "custom8": "existing",
                "custom9": "exited",
                "custom10": "realized",
                "firstName": "Ada",
                "lastName": "Lovelace",
            },
            1004: {"custom11": "exited"},
            1005: {"custom7": "exited", "firstName": 'Grace "Amazing" Hopper'},
            1006: {"lastName": "Turing"},
        }
        wave1[1002] = wave1[1001]
        wait_until(lambda: _holds(sandbox, wave1), timeout_s=60, what="wave 1 in the sandbox")

        # The user changes audience 8f81...'s Mapping ID from 8 to 12 in AEP; the profile
        # then leaves it. custom8 keeps its last value; custom12 now follows the audience.
        aliases = copy.deepcopy(ALIASES)
        aliases["ups"]["8f812592-3f06-416b-bd50-e7831848a31a"] = "12"
        later = {
            "identityMap": {"OutreachId": [{"id": "1001"}]},
            "segmentMembership": {
                "ups": {
                    "8f812592-3f06-416b-bd50-e7831848a31a": {
                        "status": "exited",
                        "lastQualificationTime": "2026-11-22T08:00:00Z",
                    }
                }
            },
            "attributes": {},
        }
        status, _, _ = await export(url, key, aep_body([later], aliases))
        assert status == 202
        wave2 = {1001: {**wave1[1001], "custom12": "exited"}}
        wait_until(lambda: _holds(sandbox, wave2), timeout_s=60, what="wave 2 in the sandbox")
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as s, s.get(f"{api}/{D}/status", headers=headers) as r:
            issues = (await r.json())["mapping_issues"]
    finally:
        await runner.cleanup()
    assert [(i["kind"], i["previous"], i["mapping_id"]) for i in issues] == [("changed", 8, 12)]


def _holds(sandbox: Sandbox, expected: dict[int, dict[str, Any]]) -> bool:
    state = sandbox.prospects()
    return all(
        {f: state.get(pid, {}).get(f) for f in fields} == fields for pid, fields in expected.items()
    )
