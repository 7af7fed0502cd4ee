"""A worker's own Prometheus ``/metrics`` (``WORKER_METRICS_PORT``; 0 = off).

Celery's prefork pool runs the drains in child processes, which no HTTP server of the main
process can see into. prometheus-client's multiprocess mode solves that: before the pool
forks, the main process gives the worker a private, fresh directory
(``PROMETHEUS_MULTIPROC_DIR``); every child writes its counts to its own files there, and the
main process serves their sum (``MultiProcessCollector``). Children that exit or are replaced
keep their counts in the sum, so the counters never go backwards.

Only this worker's own work is exported (drains, their duration, requests, outcomes). The
Redis-wide dataflow series come from the API's ``/metrics`` (app/api/prometheus.py): were every
worker to export them, a sum over N workers would count everything N times.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import bootsteps
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.settings import Settings, get_settings

log = logging.getLogger(__name__)
NS = "outreach_sync_worker"
DRAIN_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


@dataclass(frozen=True)
class _Metrics:
    drains: Counter
    drain_s: Histogram
    requests: Counter
    prospects: Counter
    bisect_requests: Counter
    fields: Counter


_metrics: _Metrics | None = None


def _get() -> _Metrics:
    """Created on first use, in the process that counts (a pool child after the fork)."""
    global _metrics
    if _metrics is None:
        d = ("destination",)
        _metrics = _Metrics(
            Counter(f"{NS}_drains", "Drain tasks this worker ran", d),
            Histogram(
                f"{NS}_drain_duration_seconds", "Time one drain ran", d, buckets=DRAIN_BUCKETS_S
            ),
            Counter(f"{NS}_requests", "Requests this worker sent to Outreach", d),
            Counter(
                f"{NS}_prospects",
                "Claimed prospects by what became of them in this worker",
                (*d, "outcome"),
            ),
            Counter(
                f"{NS}_bisect_requests",
                "Requests this worker sent for halves of a refused PATCH (in requests too)",
                d,
            ),
            Counter(
                f"{NS}_fields",
                "Fields this worker failed on their own, without failing the whole prospect",
                (*d, "outcome"),
            ),
        )
    return _metrics


#: Drain stats that count fields, not prospects: their ``outcome`` label in ``…_fields_total``.
FIELD_OUTCOMES = {"fields_isolated": "isolated", "fields_invalid_mapping": "invalid_mapping"}


def record_drain(destination: str, stats: Mapping[str, int], seconds: float) -> None:
    """Count one finished drain (its stats are ``Deliverer.drain``'s)."""
    m = _get()
    m.drains.labels(destination).inc()
    m.drain_s.labels(destination).observe(seconds)
    for name, n in stats.items():
        if not n or ":" in name:
            continue  # per-audience counts are the dataflow metrics' (Redis-wide) business
        if name == "requests":
            m.requests.labels(destination).inc(n)
        elif name == "bisect_requests":
            m.bisect_requests.labels(destination).inc(n)
        elif name in FIELD_OUTCOMES:
            m.fields.labels(destination, FIELD_OUTCOMES[name]).inc(n)
        else:
            m.prospects.labels(destination, name).inc(n)


def prepare_multiprocess() -> str:
    """A fresh private directory for this worker's processes, in force before any metric
    exists (children inherit it through the fork)."""
    path = tempfile.mkdtemp(prefix="outreach-sync-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # Metrics built from now on write to files, even if prometheus_client was imported first.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


class MetricsStep(bootsteps.StartStopStep):
    """Serves ``/metrics`` from the worker's main process when ``WORKER_METRICS_PORT`` is set."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.settings: Settings = get_settings()
        self.path: str | None = None
        self.server: Any = None
        # Runs while the worker is built, before the pool forks its children.
        if self.settings.worker_metrics_port:
            self.path = prepare_multiprocess()

    def start(self, parent: Any) -> None:
        if self.path is None:
            return
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        s = self.settings
        self.server, _ = start_http_server(
            s.worker_metrics_port, addr=s.worker_metrics_host, registry=registry
        )
        log.info(
            "worker metrics on http://%s:%d/metrics", s.worker_metrics_host, s.worker_metrics_port
        )

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
