"""Prometheus ``/metrics`` of the API: the dataflow series read from Redis, and the API process.

The dataflow series are Redis-wide (every worker's and producer's counts): ``DataflowCollector``
turns status documents (app/ops/status.py) into metric families at scrape time, so they appear
once, from the API, however many workers run. Worker processes export only their own work
(workers/prometheus.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.api.adminauth import admin_refusal
from app.config.broken import Broken
from app.core.settings import Settings
from app.ops.status import destination_status
from app.ops.status_doc import DestinationStatus, Quota
from app.ratelimit.gate import QuotaGate
from app.store.prospects import ProspectStore
from app.store.registry import Registry

NS = "outreach_sync"
D = ("destination",)
A = ("destination", "audience", "mapping_id")

#: (metric name, help, summary key) of the destination counters with no further label.
_COUNTERS = (
    ("profiles_received", "Profiles received by ingestion (any outcome)", "profiles_received"),
    ("profiles_accepted", "Profiles accepted: their changes are pending", "profiles_accepted"),
    ("profiles_rejected", "Profiles rejected as malformed", "profiles_rejected"),
    ("audiences_ignored", "Audience memberships of audiences not mapped", "audiences_ignored"),
    (
        "attributes_rejected",
        "Attributes left out of their profile: a shape or value that cannot be written",
        "attributes_rejected",
    ),
    ("prospects_activated", "Prospects Outreach took an update of", "prospects_activated"),
    ("fields_activated", "Prospect fields that reached Outreach", "fields_activated"),
    (
        "attributes_activated",
        "Attributes (not audiences) that reached Outreach",
        "attributes_activated",
    ),
    (
        "prospects_skipped_noop",
        "Prospects not sent: Outreach held every value",
        "prospects_skipped_noop",
    ),
    ("fields_skipped_noop", "Fields not sent: Outreach held the value", "fields_skipped_noop"),
    ("retries", "Updates put back for a retry after a transient error", "retried"),
    ("rate_limited", "429 answers from Outreach", "rate_limited"),
    ("requests", "Requests sent to Outreach", "requests"),
)


class DataflowCollector(Collector):
    """Metric families of status documents (one per destination), built at scrape time."""

    def __init__(
        self,
        docs: Iterable[DestinationStatus],
        *,
        up: bool = True,
        broken: Iterable[Broken] = (),
    ) -> None:
        self.docs = list(docs)
        self.up = up
        self.broken = list(broken)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{NS}_dataflow_up", "1 when Redis answered this scrape")
        up.add_metric([], 1.0 if self.up else 0.0)
        yield up
        unreadable = GaugeMetricFamily(
            f"{NS}_record_unreadable",
            "1 for a stored record that cannot be read (skipped until replaced or deleted)",
            labels=("kind", "id"),
        )
        for b in self.broken:
            unreadable.add_metric([b.kind, b.id], 1.0)
        yield unreadable
        yield from self._counters()
        yield from self._audiences()
        yield from self._gauges()
        yield from _quotas(self.docs)

    def _counters(self) -> Iterator[Metric]:
        for name, text, key in _COUNTERS:
            fam = CounterMetricFamily(f"{NS}_{name}", text, labels=D)
            for d in self.docs:
                fam.add_metric([d.destination], getattr(d.metrics.totals, key))
            yield fam
        excluded = CounterMetricFamily(
            f"{NS}_profiles_excluded", "Profiles excluded, by reason", labels=(*D, "reason")
        )
        failed = CounterMetricFamily(
            f"{NS}_failures",
            "Failure records (updates Outreach refused), by reason",
            labels=(*D, "reason"),
        )
        unmapped = CounterMetricFamily(
            f"{NS}_attributes_unmapped",
            "Attribute values no mapping reads, left out (attribute: an Outreach attribute's "
            "name, else other)",
            labels=(*D, "attribute"),
        )
        for d in self.docs:
            t = d.metrics.totals
            for reason, n in t.excluded_by_reason.items():
                excluded.add_metric([d.destination, reason], n)
            for reason, n in t.failed_by_reason.items():
                failed.add_metric([d.destination, reason], n)
            for name, n in t.unmapped_by_attribute.items():
                unmapped.add_metric([d.destination, name], n)
        yield excluded
        yield failed
        yield unmapped

    def _audiences(self) -> Iterator[Metric]:
        fams = {
            "received": CounterMetricFamily(
                f"{NS}_audience_profiles_received",
                "Profiles received naming the audience, by status",
                labels=(*A, "status"),
            ),
            "activated": CounterMetricFamily(
                f"{NS}_audience_activated",
                "Audience statuses that reached Outreach, by status",
                labels=(*A, "status"),
            ),
            "excluded": CounterMetricFamily(
                f"{NS}_audience_excluded",
                "Profiles naming the audience excluded, by reason",
                labels=(*A, "reason"),
            ),
            "failed": CounterMetricFamily(
                f"{NS}_audience_failed",
                "Audience fields Outreach refused, by reason",
                labels=(*A, "reason"),
            ),
        }
        rejected = CounterMetricFamily(
            f"{NS}_audience_rejected", "Rejected profiles naming the audience", labels=A
        )
        noop = CounterMetricFamily(
            f"{NS}_audience_skipped_noop",
            "Audience fields not sent: Outreach held the status",
            labels=A,
        )
        for d in self.docs:
            for row in d.audiences:
                labels = [d.destination, row.audience or "", str(row.mapping_id)]
                t = row.totals
                for kind, by in (
                    ("received", "received_by_status"),
                    ("activated", "activated_by_status"),
                    ("excluded", "excluded_by_reason"),
                    ("failed", "failed_by_reason"),
                ):
                    for key, n in getattr(t, by).items():
                        fams[kind].add_metric([*labels, key], n)
                rejected.add_metric(labels, t.rejected)
                noop.add_metric(labels, t.skipped_noop)
        yield from fams.values()
        yield rejected
        yield noop

    def _gauges(self) -> Iterator[Metric]:
        backlog = GaugeMetricFamily(
            f"{NS}_backlog_prospects",
            "Prospects with changes not yet delivered",
            labels=(*D, "state"),
        )
        lag = GaugeMetricFamily(
            f"{NS}_lag_seconds", "Age of the oldest change not yet delivered", labels=D
        )
        enabled = GaugeMetricFamily(f"{NS}_destination_enabled", "1 when enabled", labels=D)
        invalid = GaugeMetricFamily(
            f"{NS}_mapping_id_invalid",
            "1 for a mapping ID Outreach refused",
            labels=(*D, "mapping_id"),
        )
        conn = GaugeMetricFamily(
            f"{NS}_connection_state",
            "1 for the connection's state",
            labels=(*D, "connection", "state"),
        )
        for d in self.docs:
            dest = d.destination
            backlog.add_metric([dest, "pending"], d.pending)
            backlog.add_metric([dest, "in_flight"], d.in_flight)
            lag.add_metric([dest], d.lag_s or 0.0)
            enabled.add_metric([dest], 1.0 if d.enabled else 0.0)
            for mapping_id in d.invalid_mapping_ids:
                invalid.add_metric([dest, str(mapping_id)], 1.0)
            c = d.connection
            conn.add_metric([dest, c.id, c.state or "unknown"], 1.0)
        yield from (backlog, lag, enabled, invalid, conn)
        yield from _enrollment(self.docs)
        yield from _resolve(self.docs)


def _enrollment(docs: Iterable[DestinationStatus]) -> Iterator[Metric]:
    """Sequence enrollment: outcomes per audience (``refused:opted_out`` becomes outcome
    ``refused`` with reason ``opted_out``), how many wait, and whether it is paused."""
    outcomes = CounterMetricFamily(
        f"{NS}_enrollments",
        "Sequence enrollments and exits by outcome (enrolled, already, finished, refused...)",
        labels=(*D, "audience", "sequence", "outcome", "reason"),
    )
    waiting = GaugeMetricFamily(
        f"{NS}_enrollments_waiting", "Enrollments and exits not yet sent", labels=D
    )
    paused = GaugeMetricFamily(
        f"{NS}_enrollment_paused",
        "1 while enrollment is paused (a missing scope, a mailbox that cannot send)",
        labels=(*D, "reason"),
    )
    for d in docs:
        e = d.enrollment
        if not e.enabled and not e.audiences:
            continue
        waiting.add_metric([d.destination], e.waiting)
        reason = (e.paused_reason or "").partition(":")[0]
        paused.add_metric([d.destination, reason], 1.0 if e.paused_until_ms else 0.0)
        for row in e.audiences:
            seq = "" if row.sequence is None else str(row.sequence)
            for name, n in row.counts.items():
                outcome, _, why = name.partition(":")
                outcomes.add_metric([d.destination, row.audience, seq, outcome, why], n)
    yield from (outcomes, waiting, paused)


#: (metric name, help, Quota attribute) per Outreach user; a figure not known is left out.
_QUOTA = (
    ("quota_limit", "Requests per window the connection's rate_limit allows (ours)", "limit"),
    ("quota_used", "Requests our own moving window counted in the current window", "used"),
    ("quota_remaining", "Requests left in our own moving window", "remaining"),
    ("quota_reset_timestamp_seconds", "When our window's oldest request expires", "reset_s"),
    ("quota_paused_until_timestamp_seconds", "Pause after a 429 (0: none)", "paused_until_s"),
    (
        "quota_outreach_remaining",
        "Remaining as Outreach last reported it, less our requests in flight",
        "server_remaining",
    ),
    ("quota_outreach_limit", "The limit Outreach last reported", "reported_limit"),
    (
        "quota_outreach_spent",
        "Requests spent in Outreach's current window, as Outreach counts them",
        "outreach_spent",
    ),
    (
        "quota_governing_limit",
        "The limit that caps spending (the lower of ours and Outreach's)",
        "governing_limit",
    ),
    ("quota_window_seconds", "Length of the quota window", "window_s"),
)


#: Identity resolution's counters: (status field, metric help).
_RESOLVE = (
    ("from_cache", "Emails resolved from the cache"),
    ("by_lookup", "Emails resolved by a lookup"),
    ("lookups", "Lookup requests spent (GET /prospects by email)"),
    ("not_found", "Emails no prospect has"),
    ("ambiguous", "Emails several prospects share"),
    ("created", "Prospects created for emails"),
    ("gone", "Resolved prospects a PATCH found gone (404), resolved again"),
)


def _resolve(docs: Iterable[DestinationStatus]) -> Iterator[Metric]:
    """Identity resolution per destination (profiles known by email)."""
    docs = list(docs)
    for name, text in _RESOLVE:
        fam = CounterMetricFamily(f"{NS}_resolve_{name}", text, labels=D)
        for d in docs:
            fam.add_metric([d.destination], getattr(d.resolve, name))
        yield fam
    waiting = GaugeMetricFamily(
        f"{NS}_resolve_waiting_emails", "Emails whose changes wait for resolution", labels=D
    )
    age = GaugeMetricFamily(
        f"{NS}_resolve_oldest_waiting_seconds",
        "Age of the oldest change waiting for resolution",
        labels=D,
    )
    for d in docs:
        waiting.add_metric([d.destination], d.resolve.waiting)
        age.add_metric([d.destination], d.resolve.oldest_waiting_s or 0.0)
    yield from (waiting, age)


def _quotas(docs: Iterable[DestinationStatus]) -> Iterator[Metric]:
    """One set per Outreach user, however many destinations share it."""
    users: dict[str, Quota] = {d.quota.user: d.quota for d in docs if d.quota is not None}
    for name, text, key in _QUOTA:
        fam = GaugeMetricFamily(f"{NS}_{name}", text, labels=("user",))
        for user, q in sorted(users.items()):
            value = getattr(q, key)
            if value is not None or key == "paused_until_s":
                fam.add_metric([user], float(value or 0))
        yield fam


# The API process ----------------------------------------------------------------------------

API_REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    API_REGISTRY.register(_collector)
API_REQUESTS = Counter(
    f"{NS}_api_requests",
    "HTTP requests answered by the API",
    ("route", "method", "status"),
    registry=API_REGISTRY,
)
API_LATENCY = Histogram(
    f"{NS}_api_request_duration_seconds",
    "Time to answer an API request",
    ("route",),
    registry=API_REGISTRY,
)
SCRAPE_S = Histogram(
    f"{NS}_dataflow_scrape_duration_seconds",
    "Time to read the dataflow metrics from Redis for /metrics",
    registry=API_REGISTRY,
)


def route_of(request: web.Request) -> str:
    """The route's pattern (``/v1/destinations/{destination_id}/status``): bounded labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_of(request)
        API_REQUESTS.labels(route, request.method, str(status)).inc()
        API_LATENCY.labels(route).observe(time.perf_counter() - started)


class _Sources:
    def __init__(
        self, store: ProspectStore, registry: Registry, gate: QuotaGate, settings: Settings
    ) -> None:
        self.store, self.registry, self.gate, self.settings = store, registry, gate, settings

    async def docs(self) -> list[DestinationStatus]:
        out = []
        for dest in await self.registry.all_destination_ids():
            doc = await destination_status(
                dest, store=self.store, registry=self.registry, gate=self.gate, hours=1
            )
            if doc is not None:
                out.append(doc)
        return out


SOURCES = web.AppKey("prom_sources", _Sources)


def exposition(
    docs: Iterable[DestinationStatus], *, up: bool = True, broken: Iterable[Broken] = ()
) -> bytes:
    """The API process's metrics and the dataflow series of ``docs``, as exposition text."""
    dataflow = CollectorRegistry(auto_describe=False)
    dataflow.register(DataflowCollector(docs, up=up, broken=broken))
    return generate_latest(API_REGISTRY) + generate_latest(dataflow)


async def metrics_endpoint(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    refusal = admin_refusal(request, sources.settings)
    if refusal is not None:
        return refusal
    started = time.perf_counter()
    try:
        docs, broken, up = await sources.docs(), await sources.registry.broken(), True
    except Exception:  # Redis away: still answer, with the API's own series and up=0
        docs, broken, up = [], [], False
    SCRAPE_S.observe(time.perf_counter() - started)
    body = exposition(docs, up=up, broken=broken)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(
    app: web.Application,
    store: ProspectStore,
    registry: Registry,
    gate: QuotaGate,
    settings: Settings,
) -> None:
    """``GET /metrics`` and the request counting of every route."""
    app[SOURCES] = _Sources(store, registry, gate, settings)
    app.middlewares.append(track_requests)
    app.router.add_get("/metrics", metrics_endpoint)
