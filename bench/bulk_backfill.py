"""Bulk backfill: an audience's first activation (every member at once, plus a tenth in a
second audience, plus scattered single changes) at Outreach's 10,000/hour quota, time-scaled;
bulk delivery on against PATCH alone in the same run, with Outreach charging bulk per call
and per record.

The quota window is ``WINDOW_S`` seconds instead of an hour (a 360x time scale). The size
is a parameter (``--bulk-prospects``): a million prospects by PATCH alone would need 110
windows of sandbox traffic, more than a few minutes of two shared cores, so the default is
smaller and the document says which size ran.

A second section (``run_faults``) runs the same backfill twice more, bulk on and charged per
call: without faults, and with 5% of Outreach's answers a 5xx plus one of the two workers
killed (``kill -9``) while its batches are in flight; a fault should cost only the calls it
retried, not a fall back to one PATCH per prospect.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from app.testing.harness import wait_until
from bench.latency_cost import _tree_cpu_s
from bench.pipeline import BENCH_REDIS_URL, DEST, Pipeline, pipeline
from bench.table import Row

WINDOW_S = 10
LIMIT = 10_000
AUDIENCES = {"backfill-a": 1, "backfill-b": 2}
CHUNK = 5000
BULK = {
    "enabled": True,
    "min_group": 50,
    "ids_per_call": 1000,
    "timeout_s": 60.0,
    "poll_first_s": 0.2,
    "poll_max_s": 1.0,
}


@dataclass(frozen=True)
class Result:
    label: str
    prospects: int
    requests: int
    charged: int
    bulk_calls: int
    bulk_records: int
    seconds: float
    exact: bool
    redis_peak_mb: float
    worker_cpu_s: float
    patches: int = 0
    orphans_cancelled: int = 0
    server_errors: int = 0

    @property
    def windows(self) -> float:
        """Windows elapsed until converged (a window stands for an hour)."""
        return self.seconds / WINDOW_S

    @property
    def quota_hours(self) -> float:
        """Quota-hours to converge: the quota spent at 10,000 an hour. The time-scaled run's
        windows elapsed are reported beside it: where the workers' CPU, not the quota, set
        the pace (bulk), windows overstate what an unscaled hour would see."""
        return self.charged / LIMIT


def _profile(p: int, *, second: bool, name: str | None = None) -> dict[str, Any]:
    ups = {"backfill-a": {"status": "realized", "lastQualificationTime": "2026-11-02T00:00:00Z"}}
    if second:
        ups["backfill-b"] = {"status": "realized", "lastQualificationTime": "2026-11-02T00:00:00Z"}
    doc: dict[str, Any] = {
        "identityMap": {"OutreachId": [{"id": str(p)}]},
        "segmentMembership": {"ups": ups},
    }
    if name is not None:
        doc["attributes"] = {"firstName": {"value": name}}
        doc["timestamp"] = "2026-11-03T00:00:00Z"
    return doc


def workload(n: int) -> tuple[Iterator[list[dict[str, Any]]], list[dict[str, Any]], dict[int, Any]]:
    """(backfill chunks, scattered changes, expected final state)."""
    expected: dict[int, dict[str, Any]] = {}
    for p in range(1, n + 1):
        expected[p] = {"custom1": "realized"} | ({"custom2": "realized"} if p % 10 == 0 else {})
    scattered_ids = range(7, n + 1, max(1, 1000 // 3))  # 3 per 1,000: a few thousand per million
    scattered = [_profile(p, second=p % 10 == 0, name=f"n{p}") for p in scattered_ids]
    for p in scattered_ids:
        expected[p] = {**expected[p], "firstName": f"n{p}"}

    def chunks() -> Iterator[list[dict[str, Any]]]:
        for start in range(1, n + 1, CHUNK):
            stop = min(n + 1, start + CHUNK)
            yield [_profile(p, second=p % 10 == 0) for p in range(start, stop)]

    return chunks(), scattered, expected


class RedisPeak:
    """Samples ``used_memory`` while a run lasts; the peak above the level before it (the
    Redis is shared with other work, so this is approximate)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._base = self._used()
        self.peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        info = cast("dict[str, Any]", self._client.info("memory"))
        return int(info["used_memory"])

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._used())

    def stop_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self._base) / 2**20


def run_one(
    n: int,
    *,
    bulk: bool,
    cost: str,
    label: str,
    faults: bool = False,
    bulk_config: dict[str, Any] | None = None,
    records_per_s: int = 20_000,
    stagger: bool = False,
    **settings: str,
) -> Result:
    """One backfill by two workers. ``stagger``: the second starts once the first has
    batches in flight; with ``faults`` (5% 5xx answers) the first is killed (``kill -9``)
    at that moment."""
    chunks, scattered, expected = workload(n)
    dest = {"bulk": bulk_config or BULK} if bulk else {}
    fault_args = ("--fault-5xx-rate", "0.05", "--fault-seed", "19") if faults else ()
    peak_client = redis.Redis.from_url(BENCH_REDIS_URL)
    peak = RedisPeak(peak_client)
    with pipeline(
        sandbox_args=(
            "--quota-limit", str(LIMIT), "--quota-window-s", str(WINDOW_S),
            "--bulk-cost", cost, "--bulk-max-ids", "1000",
            "--bulk-records-per-s", str(records_per_s),
            "--prospect-ids", "1", str(n + 10), *fault_args,
        ),
        rate_limit=f"{LIMIT} per {WINDOW_S} seconds",
        audiences=AUDIENCES,
        attributes={"firstName": "firstName"},
        destination=dest,
        COALESCE_WINDOW_MS="0",
        CLAIM_BATCH="100",
        HTTP_CONCURRENCY="32",
        **settings,
    ) as run:  # fmt: skip
        for chunk in chunks:
            run.producer.send(DEST, chunk)
        run.start_workers(1 if stagger else 2, concurrency=1)
        t0 = time.monotonic()
        cpu0 = sum(_tree_cpu_s(w.pid) for w in run.workers)
        if stagger:
            _in_flight(run)
            if faults:
                os.killpg(run.workers[0].pid, signal.SIGKILL)
                run.workers[0].wait()
            run.start_workers(1, concurrency=1)
        time.sleep(1.0)
        run.producer.send(DEST, scattered)  # single changes arriving during the backfill
        exact = _converge(run, expected, timeout_s=120 + n / 200)
        seconds = time.monotonic() - t0
        cpu = sum(_tree_cpu_s(w.pid) for w in run.workers if w.poll() is None) - cpu0
        stats = run.sandbox.stats()
        log = run.sandbox.get("/_sandbox/requests?since=0")["requests"]
        patches = sum(1 for x in log if x["method"] == "PATCH")
        counters = run.client.hgetall(run.keys.counters(DEST))
        orphans = int(counters.get(b"drain_bulk_orphans_cancelled", 0))
        errors = sum(n for code, n in stats["by_status"].items() if code.startswith("5"))
    result = Result(
        label,
        n,
        stats["requests"],
        stats["by_user"]["test-user"]["charged"],
        stats["bulk"]["batches"],
        stats["bulk"]["records_modified"],
        seconds,
        exact,
        peak.stop_mb(),
        cpu,
        patches,
        orphans,
        errors,
    )
    peak_client.close()
    print(
        f"bulk backfill {label}: {result.requests} requests, {result.charged} charged, "
        f"{result.patches} PATCHes, {result.windows:.1f} windows, "
        f"exact={exact}",
        file=sys.stderr,
        flush=True,
    )
    return result


def _in_flight(run: Pipeline) -> None:
    """Wait until the (only) worker has two bulk batches in flight."""
    wait_until(
        lambda: run.client.hlen(run.keys.bulk_batches(DEST)) >= 2,
        timeout_s=120,
        what="bulk batches in flight",
        every_s=0.01,
    )


def _converge(run: Pipeline, expected: dict[int, dict[str, Any]], *, timeout_s: float) -> bool:
    def done() -> bool:
        return run.idle() and len(run.sandbox.prospects()) >= len(expected)

    wait_until(done, timeout_s=timeout_s, what="the backfill to converge", every_s=1.0)
    state = run.sandbox.prospects()
    return all(state.get(p) == fields for p, fields in expected.items())


def run(*, smoke: bool, prospects: int | None = None) -> tuple[list[Row], list[Result]]:
    n = prospects or (600 if smoke else 50_000)
    # One PATCH-alone baseline serves both charging modes: with bulk off no bulk call is made,
    # so how Outreach would charge one cannot change it (and at a million it is the long run).
    runs = [
        run_one(n, bulk=False, cost="call", label="PATCH alone"),
        run_one(n, bulk=True, cost="call", label="bulk, charged per call"),
        run_one(n, bulk=True, cost="record", label="bulk, charged per record"),
    ]
    off, on, on_rec = runs
    off_rec = off
    what = f"{n:,} prospects + {n // 10:,} in a 2nd audience"
    base = "PATCH alone (bulk off), same run"
    rows = [
        Row("bulk backfill", f"quota spent, {what}; charged per call; exact: {on.exact}",
            on.charged, off.charged, base, goal="<= 10,000 at 1M", higher_is_better=False),
        Row("bulk backfill", f"quota-hours to converge, {what}; charged per call",
            on.quota_hours, off.quota_hours, base, goal="< 1", higher_is_better=False),
        Row("bulk backfill", f"quota spent, {what}; charged per record; exact: {on_rec.exact}",
            on_rec.charged, off_rec.charged, base, goal="<= PATCH alone",
            higher_is_better=False),
        Row("bulk backfill", "worker CPU s, charged per call", on.worker_cpu_s, off.worker_cpu_s,
            base, higher_is_better=False),
        Row("bulk backfill", "peak Redis MB above start, charged per call", on.redis_peak_mb,
            off.redis_peak_mb, base, higher_is_better=False),
    ]  # fmt: skip
    return rows, runs


#: The fault section's bulk settings and lease: a shorter deadline and lease, so a killed
#: worker's batches are cancelled and their claims back within seconds, not minutes (both
#: runs use them).
FAULT_BULK = {**BULK, "timeout_s": 10.0}
FAULT_SETTINGS = {"LEASE_MS": "5000", "OUTREACH_TIMEOUT_S": "3"}


def run_faults(*, smoke: bool, prospects: int | None = None) -> tuple[list[Row], list[Result]]:
    """Bulk on, charged per call, the same backfill with and without faults (5% 5xx answers
    and a worker killed while its batches are in flight): what the faults cost."""
    n = prospects or (600 if smoke else 20_000)
    common: dict[str, Any] = {"bulk": True, "cost": "call", "bulk_config": FAULT_BULK}
    common |= {"records_per_s": 5000, "stagger": True, **FAULT_SETTINGS}
    calm = run_one(n, label="bulk, no faults", **common)
    hit = run_one(n, label="bulk, 5% 5xx + a worker killed", faults=True, **common)
    what = f"{n:,} prospects + {n // 10:,} in a 2nd audience, 5% 5xx + kill -9 mid-batch"
    base = "the same backfill without faults, same run"
    rows = [
        Row("bulk faults", f"quota spent, {what}; exact: {hit.exact} (fault-free: {calm.exact})",
            hit.charged, calm.charged, base, goal="<= 1.5x (+ retried calls)",
            higher_is_better=False),
        Row("bulk faults", f"requests sent, {what}", hit.requests, calm.requests, base,
            higher_is_better=False),
        Row("bulk faults", f"PATCHes sent, {what}", hit.patches, calm.patches, base,
            higher_is_better=False),
    ]  # fmt: skip
    return rows, [calm, hit]


def fault_detail(runs: list[Result]) -> list[str]:
    out = [
        "| bulk fault run | prospects | requests | quota spent | PATCHes | bulk calls "
        "| records by bulk | 5xx answers | orphaned batches cancelled | seconds "
        "| final state exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        out.append(
            f"| {r.label} | {r.prospects:,} | {r.requests:,} | {r.charged:,} | {r.patches:,} "
            f"| {r.bulk_calls:,} | {r.bulk_records:,} | {r.server_errors:,} "
            f"| {r.orphans_cancelled:,} "
            f"| {r.seconds:.0f} | {r.exact} |"
        )
    return out


def detail(runs: list[Result]) -> list[str]:
    out = [
        "| bulk run | prospects | requests | quota spent | bulk calls | records by bulk "
        "| quota-hours | windows elapsed | final state exact | peak Redis MB | worker CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in runs:
        out.append(
            f"| {r.label} | {r.prospects:,} | {r.requests:,} | {r.charged:,} | {r.bulk_calls:,} "
            f"| {r.bulk_records:,} | {r.quota_hours:.2f} | {r.windows:.2f} | {r.exact} "
            f"| {r.redis_peak_mb:.0f} "
            f"| {r.worker_cpu_s:.1f} |"
        )
    return out
