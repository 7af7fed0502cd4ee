"""Redis failures told apart: an outage (refused, lost, hung) is a 503 to send again; an error
Redis answers with (a script's) is a bug, never "unavailable"; and data Lua's JSON cannot
read is refused at validation, naming the field, before it reaches a script."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import sentry_sdk
from aiohttp import web
from limits.errors import StorageError

from app.api.app import make_app
from app.core.errors import StoreFault, StoreUnavailable, store_error, unreachable
from app.core.keys import Keys
from app.core.redis_client import async_client
from app.ingest.audience_ids import MAX_AUDIENCE_ID_CHARS
from app.ops.sentry import init_sentry
from app.outreach.client import Response
from app.store.audience_map import learned_sync
from app.store.registry import publish_sync
from app.testing.harness import kill_groups, start_worker
from tests.scripted_outreach import D, FakeOutreach, ok, pending, setup_destination, warm_deliverer
from tests.support import (
    ROOT,
    CapturingTransport,
    LocalRedis,
    e2e_config,
    free_port,
    make_settings,
    profile,
    settings_env,
    wait_until,
)

ADMIN_KEY = "redis-faults-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def test_only_an_outage_counts_as_unreachable() -> None:
    outages = [
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
        StorageError(redis.ConnectionError("lost")),
    ]
    faults = [
        redis.ResponseError("user_script:12: Expected value but found invalid unicode escape"),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        StorageError(redis.ResponseError("ERR unknown command")),
    ]
    assert all(unreachable(e) for e in outages)
    assert not any(unreachable(e) for e in faults)
    assert all(isinstance(store_error(e), StoreUnavailable) for e in outages)
    assert all(isinstance(store_error(e), StoreFault) for e in faults)


@pytest.fixture
async def api(prefix: str, rclient: redis.Redis) -> AsyncIterator[str]:
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    publish_sync(rclient, keys, e2e_config("aep", audiences={}, mapping_ids="data"))
    env = settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY)
    runner = web.AppRunner(make_app(make_settings(env)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1/destinations"
    await runner.cleanup()


async def post(url: str, body: str, headers: dict[str, str]) -> tuple[int, Any, str | None]:
    async with (
        aiohttp.ClientSession(headers=AUTH) as s,
        s.post(url, data=body.encode(), headers=headers) as r,
    ):
        return r.status, await r.json(), r.headers.get("Retry-After")


def member(audience: str, mapping_id: int | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": "realized"}
    if mapping_id is not None:
        doc["mappingId"] = mapping_id
    return {audience: doc}


def aep_line(pid: int, *audiences: dict[str, Any]) -> str:
    merged = {k: v for a in audiences for k, v in a.items()}
    doc = {"identityMap": {"OutreachId": [{"id": str(pid)}]}, "segmentMembership": {"ups": merged}}
    # json.dumps would escape the backslash: the line must carry the JSON escape itself.
    return json.dumps(doc).replace("LONE", "\\ud800")


async def test_a_lone_surrogate_audience_id_is_refused_alone_and_the_batch_is_stored(
    api: str, rclient: redis.Redis, prefix: str
) -> None:
    body = "\n".join(
        [
            aep_line(1, member("aud-a", 7)),
            aep_line(2, member("LONE", 8), member("aud-b", 9)),
            aep_line(3, member("xLONE", None)),  # no mappingId: looked up, refused all the same
            aep_line(4, member("aud-a", None)),
        ]
    )
    status, doc, _ = await post(f"{api}/aep/profiles", body, NDJSON)
    assert status == 202, doc
    outcomes = [p["outcome"] for p in doc["profiles"]]
    assert outcomes == ["accepted", "accepted", "rejected", "accepted"]
    (left_out,) = doc["profiles"][1]["audiences_rejected"]
    assert left_out["audience"] == "\\ud800"
    assert left_out["reason"] == (
        "segmentMembership.ups.\\ud800: the audience id is not valid Unicode "
        "(it contains a lone surrogate)"
    )
    assert "lone surrogate" in doc["profiles"][2]["reason"]
    keys = Keys(prefix)
    assert learned_sync(rclient, keys, "aep") == {"aud-a": 7, "aud-b": 9}
    assert rclient.hget(keys.pending("aep", 4), "custom7") == b'"realized"'
    assert rclient.hget(keys.counters("aep"), "audience_ids_invalid") == b"2"


async def test_an_audience_id_past_the_cap_is_refused_and_never_learned(
    api: str, rclient: redis.Redis, prefix: str
) -> None:
    longest, too_long = "a" * MAX_AUDIENCE_ID_CHARS, "b" * 1_000_000
    body = "\n".join([aep_line(1, member(longest, 7), member(too_long, 8))])
    status, doc, _ = await post(f"{api}/aep/profiles", body, NDJSON)
    assert status == 202, doc
    (left_out,) = doc["profiles"][0]["audiences_rejected"]
    assert f"longer than {MAX_AUDIENCE_ID_CHARS} characters" in left_out["reason"]
    # The answer names the audience, cut: it does not echo a megabyte back.
    assert len(json.dumps(doc)) < 4 * MAX_AUDIENCE_ID_CHARS
    assert learned_sync(rclient, Keys(prefix), "aep") == {longest: 7}


@pytest.fixture
def sentry(prefix: str) -> Iterator[CapturingTransport]:
    env = settings_env(prefix, None, SENTRY_DSN="https://public@sentry.invalid/1")
    capture = CapturingTransport()
    assert init_sentry(make_settings(env), component="test", transport=capture)
    yield capture
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


async def test_an_error_redis_answers_with_is_a_500_reported_as_a_bug_not_an_outage(
    api: str, rclient: redis.Redis, prefix: str, sentry: CapturingTransport
) -> None:
    # A key of the wrong type makes merge.lua fail inside Redis: a bug, not an outage.
    rclient.set(Keys(prefix).versions("e2e", 1), "not a hash")
    status, doc, retry_after = await post(
        f"{api}/e2e/profiles", json.dumps(profile("1")), {"Content-Type": "application/json"}
    )
    assert status == 500 and retry_after is None
    assert doc["errors"][0]["title"] == "Internal error"
    assert "cannot be reached" not in doc["errors"][0]["detail"]
    sentry_sdk.flush(timeout=5)
    assert "WRONGTYPE" in sentry.text() and "Redis refused a command" in sentry.text()


def test_cli_ingest_names_an_error_redis_answers_with_as_a_bug_and_does_not_wait(
    prefix: str, rclient: redis.Redis
) -> None:
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    rclient.set(keys.versions("e2e", 1), "not a hash")
    out = subprocess.run(
        [sys.executable, "-m", "app", "ingest", "-", "-d", "e2e", "-q", "--retry-for", "60"],
        input=json.dumps(profile("1")),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **settings_env(prefix, None)},
        timeout=30,
    )
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1
    assert last.startswith("error: Redis refused profiles 0 to 0 (")
    assert "WRONGTYPE" in last and "a bug, not an outage" in last
    assert "unavailable" not in last


# A hung Redis: it accepts connections and never answers.

#: Deadlines the hung-Redis tests run with (the defaults are 5 s and 3 s).
FAST = {"REDIS_SOCKET_TIMEOUT_S": "1", "REDIS_CONNECT_TIMEOUT_S": "1"}


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """The address of a listener that never accepts: the kernel completes each connection
    (up to the backlog), and nothing is ever answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


async def test_a_hung_redis_is_a_quick_503_on_every_route_that_needs_it(
    prefix: str, hung_redis: str
) -> None:
    env = settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY, REDIS_URL=hung_redis, **FAST)
    runner = web.AppRunner(make_app(make_settings(env)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base, body = f"http://127.0.0.1:{port}", json.dumps(profile("1"))
    wrong = {"Authorization": "Bearer not-a-key"}
    requests = [
        ("GET", "/readyz", {}),
        ("GET", "/metrics", AUTH),
        ("POST", "/v1/destinations/e2e/profiles", AUTH),
        ("POST", "/v1/destinations/e2e/profiles", wrong),
        ("GET", "/v1/destinations/e2e/status", AUTH),
        ("GET", "/v1/admin/destinations", AUTH),
    ]
    json_type = {"Content-Type": "application/json"}

    async def answer(
        s: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str]
    ) -> tuple[str, int, str | None, float]:
        started = time.monotonic()
        headers = {**headers, **json_type}
        async with s.request(method, base + path, data=body, headers=headers) as r:
            return path, r.status, r.headers.get("Retry-After"), time.monotonic() - started

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            answers = await asyncio.gather(*(answer(s, *r) for r in requests))
            async with s.get(f"{base}/healthz") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    for path, status, retry_after, took in answers:
        assert (path, status) == (path, 503) and retry_after is not None, answers
        assert took < 5, answers  # a deadline of 1 s (two at most), not a hang


async def test_a_drain_gives_up_its_claims_when_redis_hangs_and_they_come_back(
    prefix: str, local_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops answering mid-drain (SIGSTOP: connections still open, no answer): the
    drain ends within its deadlines, counts the claims it gave up, and once Redis answers
    again they are due after their lease."""
    own = redis.Redis.from_url(local_redis.url)
    settings = setup_destination(
        prefix, own, REDIS_URL=local_redis.url, LEASE_MS="1100", OUTREACH_TIMEOUT_S="0.1", **FAST
    )
    assert local_redis.proc is not None
    pid = local_redis.proc.pid

    def hang_redis(prospect: int, fields: Any) -> Response:
        os.kill(pid, signal.SIGSTOP)
        return ok()

    aclient = async_client(settings)
    try:
        outreach = FakeOutreach(lambda p, f: ok())
        deliverer, store = await warm_deliverer(aclient, settings, outreach)
        await pending(store, {p: {"custom1": "realized"} for p in (1, 2, 3)})
        outreach.answer = hang_redis
        try:
            stats = await asyncio.wait_for(deliverer.drain(D), timeout=15)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert stats["abandoned"] == 3
        assert "drain of d stopped: Redis unavailable" in caplog.text
        # Back once the lease ends: sent by the next drain.
        await asyncio.sleep(1.2)
        outreach.answer = lambda p, f: ok()
        outreach.calls.clear()
        await deliverer.drain(D)
        assert sorted(p for p, _ in outreach.calls) == [1, 2, 3]
    finally:
        await aclient.aclose()
        own.close()


def test_a_worker_on_a_hung_redis_says_so_and_keeps_trying(
    prefix: str, hung_redis: str, tmp_path: Path
) -> None:
    """Celery's consumer retries the broker (``broker_connection_max_retries``, then exits),
    the dispatcher retries Redis every second; each failure is logged, none hangs."""
    env = settings_env(prefix, None, REDIS_URL=hung_redis, **FAST)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = start_worker(env, name=f"{prefix}-hung", output=out)
    try:

        def reported() -> bool:
            text = log.read_text()
            return "consumer: Cannot connect" in text and "dispatcher cannot reach" in text

        wait_until(lambda: worker.poll() is not None or reported(), timeout_s=30, what="logs")
        assert worker.poll() is None  # still trying
        assert "Timeout reading from socket" in log.read_text()
    finally:
        kill_groups([worker])
