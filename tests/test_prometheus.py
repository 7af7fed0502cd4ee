"""Prometheus: the API's /metrics (dataflow series read from Redis, the API's own requests) and
a worker's /metrics (its prefork children's work, summed by the main process)."""

from __future__ import annotations

import dataclasses
import json
import re
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
from tests.support import (
    ROOT,
    Sandbox,
    e2e_config,
    free_port,
    idle,
    make_settings,
    settings_env,
    wait_until,
)

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


# The Grafana dashboard -----------------------------------------------------------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "outreach-sync.json"
#: Labels Prometheus adds to every series it scrapes (not the service's).
TARGET_LABELS = {"instance", "job"}
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                 "or", "unless", "offset"}  # fmt: skip


def _declared(metric: Any) -> dict[str, set[str]]:
    """The series a prometheus-client metric object exposes, with their labels."""
    name, labels = metric._name, set(metric._labelnames)
    if metric._type == "counter":
        return {f"{name}_total": labels}
    if metric._type == "histogram":
        return {f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels}
    return {name: labels}


def _rich_status() -> Any:
    """A status document with every figure present, so every dataflow family has a sample."""
    from app.ops.status_doc import DestinationStatus

    by = {"realized": 1, "exited": 1}
    reasons = {"http_404": 1}
    figures = {"received_by_status": by, "activated_by_status": by, "excluded_by_reason": reasons,
               "failed_by_reason": reasons, "rejected": 1, "skipped_noop": 1}  # fmt: skip
    quota = {"user": "u", "limit": 1, "used": 1, "remaining": 1, "reset_s": 1.0,
             "paused_until_s": 1.0, "server_remaining": 1, "server_reset_s": 1.0, "window_s": 3600,
             "configured_limit": 1, "reported_limit": 1, "outreach_spent": 1,
             "governing_limit": 1, "governing": "configured", "governing_why": ""}  # fmt: skip
    flow = {"excluded_by_reason": reasons, "failed_by_reason": reasons}
    return DestinationStatus.model_validate(
        {"destination": "d", "name": "D", "enabled": True, "generated_at": None, "pending": 1,
         "in_flight": 1, "lag_s": 1.0, "oldest_pending_at": None, "lag_exact": True,
         "counters": {}, "invalid_mapping_ids": [1],
         "metrics": {"totals": flow, "window": {"hours": 1, "from": None, "to": None},
                     "hourly": []},
         "audiences": [{"audience": "a", "mapping_id": 1, "field": "custom1",
                        "totals": figures}],
         "connection": {"id": "c", "known": True, "state": "active"}, "quota": quota,
         "enrollment": {"enabled": True, "waiting": 1, "paused_until_ms": 1,
                        "paused_reason": "scope_missing: x",
                        "audiences": [{"audience": "a", "sequence": 7, "on_exit": "finish",
                                       "counts": {"enrolled": 1, "refused:opted_out": 1}}]}}
    )  # fmt: skip


def exported_series() -> dict[str, set[str]]:
    """Every series name the service exports (API and worker ``/metrics``) with its labels."""
    from app.api import prometheus as api
    from workers.prometheus import _get

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(api.exposition([_rich_status()]).decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    for metric in (api.API_REQUESTS, api.API_LATENCY, api.SCRAPE_S):
        out.update(_declared(metric))
    for field in dataclasses.fields(_get()):
        out.update(_declared(getattr(_get(), field.name)))
    return out


def query_problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in a PromQL query names a series or label the service does not export."""
    bare = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    grouping = {
        label.strip()
        for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", bare)
        for label in m.group(1).split(",")
        if label.strip()
    }
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", bare)
    names, problems = [], []
    for m in re.finditer(r'(?<![\w$:."])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?', bare):
        name, matchers, call = m.groups()
        if call or name in _PROMQL_WORDS:
            continue
        names.append(name)
        if name not in exported:
            problems.append(f"{name} is not exported")
            continue
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""):
            if label not in exported[name]:
                problems.append(f"{name} has no label {label}")
    if not names:
        problems.append("names no metric")
    known = set().union(*(exported.get(n, set()) for n in names)) | TARGET_LABELS
    problems += [f"no series of the query has label {g}" for g in sorted(grouping - known)]
    return problems


def test_grafana_dashboard_queries_name_exported_metrics_and_labels() -> None:
    exported = exported_series()
    dash = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 20
    problems = {q: query_problems(q, exported) for q in queries}
    assert {q: p for q, p in problems.items() if p} == {}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"])
            assert found is not None, var["name"]
            assert found[2] in exported[found[1]], var["name"]
    # What ops teams scaling workers look at is there.
    text = " ".join(queries)
    for series in ("outreach_sync_profiles_received_total", "outreach_sync_backlog_prospects",
                   "outreach_sync_lag_seconds", "outreach_sync_quota_outreach_spent",
                   "outreach_sync_rate_limited_total", "outreach_sync_failures_total",
                   "outreach_sync_worker_drain_duration_seconds_sum"):  # fmt: skip
        assert series in text, series


def test_dashboard_check_catches_a_wrong_metric_or_label() -> None:
    exported = exported_series()
    assert query_problems("rate(outreach_sync_nope_total[5m])", exported) == [
        "outreach_sync_nope_total is not exported"
    ]
    assert query_problems('outreach_sync_lag_seconds{destinaton="x"}', exported) == [
        "outreach_sync_lag_seconds has no label destinaton"
    ]
    assert query_problems("sum by (reason) (outreach_sync_lag_seconds)", exported) == [
        "no series of the query has label reason"
    ]
    assert query_problems("time() - 5", exported) == ["names no metric"]
