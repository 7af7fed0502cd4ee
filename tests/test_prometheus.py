"""Prometheus: the API's /metrics (dataflow series read from Redis, the API's own requests) and
a worker's /metrics (its prefork children's work, summed by the main process)."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from app.api.app import make_app
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.conftest import Sandbox, free_port, make_settings, settings_env, wait_until
from tests.test_end_to_end import e2e_config, idle

ADMIN_KEY = "prometheus-test-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample by (name, labels); a duplicate series fails the test."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def profile(pid: object, **audiences: str) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": pid}]} if pid is not None else {},
        "segmentMembership": {
            "ups": {a.replace("_", "-"): {"status": s} for a, s in audiences.items()}
        },
    }


@pytest.fixture
async def api(prefix: str, rclient: redis.Redis) -> AsyncIterator[str]:
    publish_sync(rclient, Keys(prefix), e2e_config())
    env = settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY, COALESCE_WINDOW_MS="600000")
    runner = web.AppRunner(make_app(make_settings(env)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    producer = Producer(make_settings(env))
    producer.send(
        "e2e",
        [
            profile("11", aud_1="realized", aud_2="exited"),
            profile("12", aud_1="existing"),
            profile("13", aud_1="realized"),
            profile(None, aud_1="realized"),
            profile("x", aud_2="realized"),
        ],
    )
    producer.close()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_api_metrics_parse_and_carry_the_dataflow_series(api: str) -> None:
    status, _, _ = await get(f"{api}/v1/destinations/e2e/status?hours=3", AUTH)
    assert status == 200
    assert (await get(f"{api}/v1/destinations/e2e/status?hours=abc", AUTH))[0] == 400
    status, ctype, text = await get(f"{api}/metrics", AUTH)
    assert status == 200 and ctype.startswith("text/plain")
    got = samples(text)
    d = {"destination": "e2e"}
    assert value(got, "outreach_sync_dataflow_up") == 1
    assert value(got, "outreach_sync_profiles_received_total", **d) == 5
    assert value(got, "outreach_sync_profiles_accepted_total", **d) == 3
    assert value(got, "outreach_sync_profiles_excluded_total", **d, reason="no_identity") == 1
    assert value(got, "outreach_sync_profiles_excluded_total", **d, reason="bad_identity") == 1
    aud1 = {**d, "audience": "aud-1", "mapping_id": "1"}
    received = "outreach_sync_audience_profiles_received_total"
    assert value(got, received, **aud1, status="realized") == 3
    assert value(got, received, **aud1, status="existing") == 1
    assert value(got, "outreach_sync_audience_excluded_total", **aud1, reason="no_identity") == 1
    aud2 = {**d, "audience": "aud-2", "mapping_id": "2"}
    assert value(got, "outreach_sync_audience_excluded_total", **aud2, reason="bad_identity") == 1
    assert value(got, "outreach_sync_requests_total", **d) == 0
    # Nothing delivered yet (a long coalescing window): backlog and lag are gauges.
    assert value(got, "outreach_sync_backlog_prospects", **d, state="pending") == 3
    assert value(got, "outreach_sync_lag_seconds", **d) > 0
    assert value(got, "outreach_sync_quota_remaining", user="test-user") == 10000
    assert value(got, "outreach_sync_quota_limit", user="test-user") == 10000
    assert value(got, "outreach_sync_connection_state", **d, connection="conn", state="active") == 1
    # The API process's own series: requests by route pattern and status.
    route = "/v1/destinations/{destination_id}/status"
    api_requests = "outreach_sync_api_requests_total"
    assert value(got, api_requests, route=route, method="GET", status="200") >= 1
    assert value(got, api_requests, route=route, method="GET", status="400") >= 1
    assert any(name == "process_cpu_seconds_total" for name, _ in got)


async def test_api_metrics_need_the_admin_key(api: str) -> None:
    status, _, text = await get(f"{api}/metrics")
    assert status == 401 and ADMIN_KEY not in text


@pytest.mark.integration
def test_worker_metrics_sum_the_pool_children_and_leave_dataflow_to_the_api(
    prefix: str,
    rclient: redis.Redis,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
) -> None:
    port = free_port()
    env = settings_env(
        prefix, sandbox, COALESCE_WINDOW_MS="50", CLAIM_BATCH="5", WORKER_METRICS_PORT=str(port)
    )
    keys = Keys(prefix)
    publish_sync(rclient, keys, e2e_config())
    worker_factory(env, concurrency=2)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> Samples | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return samples(r.read().decode())
        except OSError:
            return None

    wait_until(lambda: scrape() is not None, timeout_s=20, what="the worker's /metrics")
    producer = Producer(make_settings(env))
    for wave in range(3):
        producer.send(
            "e2e", [profile(str(100 + wave * 20 + i), aud_1="realized") for i in range(20)]
        )
        wait_until(lambda: idle(rclient, keys, "e2e"), timeout_s=30, what="the wave to land")
    producer.close()
    sent = sandbox.stats()["requests"]
    assert sent == 60

    def counted() -> float:
        got = scrape() or {}
        return sum(v for (n, _), v in got.items() if n == "outreach_sync_worker_requests_total")

    # Drains run in the pool's children; the main process serves their sum.
    wait_until(lambda: counted() == sent, timeout_s=10, what="the worker to count every request")
    got = scrape() or {}
    delivered = (
        "outreach_sync_worker_prospects_total",
        frozenset({("destination", "e2e"), ("outcome", "delivered")}),
    )
    assert got[delivered] == 60
    assert sum(v for (n, _), v in got.items() if n == "outreach_sync_worker_drains_total") >= 1
    # The Redis-wide dataflow series are the API's: never one copy per worker.
    assert not any(n.startswith("outreach_sync_profiles_") for n, _ in got)
