"""Latency and cost: what coalescing costs in delay, and what a delivered update costs a worker.

Both against the obvious alternative from the same run (``bench.baseline_app``: one Celery
task per update, no rate limit), each side with one worker process of concurrency 2 and a
sandbox of its own whose quota is far above what is sent.

- Latency: one profile event per distinct prospect at a steady rate; per prospect, the time
  from the event being accepted (``Producer.send`` / ``apply_async`` returned) to the PATCH
  being received by the sandbox (its request log).
- Cost: a backlog drained until every update is delivered; the worker's CPU seconds while
  draining (per 10,000 updates) and its peak RSS.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
from pydantic import RedisDsn

from app.config.destinations import Config, parse_config
from app.core.keys import Keys
from app.core.settings import Settings
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from app.testing.harness import Sandbox, forget_run, kill_groups, start_worker, wait_until
from bench.table import Row
from bench.wiring import BENCH_REDIS_URL

BASELINE_NAME = "one Celery task per update"
WINDOW_MS = 1000  # COALESCE_WINDOW_MS's default, used for the latency run
RATE_PER_S = 50.0
DEST = "bench"
CONCURRENCY = 2
#: Far above anything sent, so the quota gate never holds a request back.
QUOTA_LIMIT, QUOTA_WINDOW_S = 1_000_000, 3600
#: Prospect used to bring a worker up before anything is measured (pool forked, connections
#: open); the measured prospects start at FIRST_PROSPECT.
WARM_PROSPECT = 99
FIRST_PROSPECT = 100_000
CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
#: Celery warns on stderr when a worker runs as root (as in containers); not our output.
QUIET_ROOT = "ignore:You're running the worker with superuser privileges"

Send = Callable[[Sequence[int]], None]


@dataclass(frozen=True)
class Side:
    """One running pipeline: its sandbox, its worker process and how to send it updates."""

    sandbox: Sandbox
    worker: subprocess.Popen[bytes]
    send: Send
    #: True once everything sent so far has been delivered and settled.
    settled: Callable[[], bool]


@dataclass(frozen=True)
class Cost:
    cpu_s: float
    peak_rss_mb: float
    delivered: int

    @property
    def cpu_per_10k(self) -> float:
        return self.cpu_s / self.delivered * 10_000 if self.delivered else float("nan")


def run(*, smoke: bool) -> list[Row]:
    seconds = 3.0 if smoke else 20.0
    backlog = 300 if smoke else 5000
    later = Teardowns()
    try:
        ours_lat = _latency(_ours(later, window_ms=WINDOW_MS), later, seconds, "ours")
        base_lat = _latency(_baseline(later), later, seconds, "baseline")
        ours_cost = _cost(_ours(later, window_ms=0), later, backlog, "ours")
        base_cost = _cost(_baseline(later), later, backlog, "baseline")
    finally:
        later.wait()

    def latency(metric: str, q: int, goal: str = "") -> Row:
        return Row("latency", metric, ours_lat[q], base_lat[q], BASELINE_NAME, goal, False)

    def cost(metric: str, ours: float, base: float) -> Row:
        return Row("cost", metric, ours, base, BASELINE_NAME, higher_is_better=False)

    return [
        latency("p50 ms", 50),
        latency("p95 ms", 95),
        latency(f"p99 ms (window {WINDOW_MS} ms)", 99, "<= window + 250 ms"),
        cost("worker CPU s per 10,000 updates", ours_cost.cpu_per_10k, base_cost.cpu_per_10k),
        cost("worker peak RSS MB", ours_cost.peak_rss_mb, base_cost.peak_rss_mb),
    ]


# Measurements ---------------------------------------------------------------------------


def _latency(
    side_cm: AbstractContextManager[Side], later: Teardowns, seconds: float, label: str
) -> dict[int, float]:
    """p50/p95/p99 (ms) of event accepted -> PATCH received, at RATE_PER_S for ``seconds``."""
    prospects = range(FIRST_PROSPECT, FIRST_PROSPECT + int(RATE_PER_S * seconds))
    with side_cm as side:
        later.wait()
        log = RequestLog(side.sandbox)
        accepted = _produce(side.send, prospects, RATE_PER_S)
        wait_until(
            lambda: _alive(side) and log.poll().issuperset(prospects),
            timeout_s=30 + seconds,
            what=f"{label}'s PATCHes",
            every_s=0.25,
        )
        latencies = [(log.first[p] - accepted[p]) * 1000 for p in prospects]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    result = {50: cuts[49], 95: cuts[94], 99: cuts[98]}
    _progress(
        f"latency {label}: {len(latencies)} events, p50 {result[50]:.0f} ms, "
        f"p95 {result[95]:.0f} ms, p99 {result[99]:.0f} ms, max {max(latencies):.0f} ms"
    )
    return result


def _produce(send: Send, prospects: Sequence[int], rate: float) -> dict[int, float]:
    """A producer thread sending one event per prospect at ``rate``; the accept time of each."""
    accepted: dict[int, float] = {}
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            t0 = time.monotonic()
            for i, prospect in enumerate(prospects):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                send([prospect])
                accepted[prospect] = time.time()  # the sandbox logs time.time() too
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=producer, name="producer")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return accepted


def _cost(
    side_cm: AbstractContextManager[Side], later: Teardowns, backlog: int, label: str
) -> Cost:
    """The worker's CPU and peak RSS for draining ``backlog`` updates.

    Measured on the worker's own process tree (its main process and the pool processes it
    forked, found through /proc/<pid>/task/*/children) rather than with
    ``getrusage(RUSAGE_CHILDREN)``: that also counts every other child this process has
    waited for (the sandbox), and its ``ru_maxrss`` is a maximum since this process started,
    not a delta, so an earlier, larger child (another benchmark's worker or sandbox) would
    hide this one's. CPU is utime+stime (plus cutime+cstime of reaped children) of the tree,
    from after the worker has started and delivered one warm-up update to after the last
    update is delivered and settled, so the fixed start-up cost (imports, forking the pool)
    is counted for neither side. Peak RSS is the sum over the tree of each process's VmHWM,
    read just before stopping the worker: the most memory the worker held, start-up
    included (pages a pool process shares with its parent count in both, as RSS always does,
    for both sides alike).
    """
    prospects = range(FIRST_PROSPECT, FIRST_PROSPECT + backlog)
    with side_cm as side:
        later.wait()
        pid = side.worker.pid
        start_cpu = _tree_cpu_s(pid)
        log = RequestLog(side.sandbox)
        t0 = time.monotonic()
        side.send(prospects)
        wait_until(
            lambda: _alive(side) and log.poll().issuperset(prospects) and side.settled(),
            timeout_s=60 + backlog / 50,
            what=f"{label}'s backlog",
            every_s=0.2,
        )
        seconds = time.monotonic() - t0
        cost = Cost(_tree_cpu_s(pid) - start_cpu, _tree_hwm_mb(pid), len(prospects))
    _progress(
        f"cost {label}: {cost.delivered} updates in {seconds:.1f} s, worker CPU "
        f"{cost.cpu_s:.2f} s (start-up {start_cpu:.2f} s not counted), "
        f"peak RSS {cost.peak_rss_mb:.0f} MB"
    )
    return cost


class RequestLog:
    """The sandbox's request log, read incrementally: first accepted PATCH per prospect."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._since = 0.0
        self.first: dict[int, float] = {}

    def poll(self) -> set[int]:
        """Read what is new; return the prospects that have received a PATCH so far."""
        answer = self._sandbox.get(f"/_sandbox/requests?since={self._since!r}")
        for r in answer["requests"]:
            if r["method"] == "PATCH" and r["status"] == 200 and r["prospect_id"] is not None:
                p = int(r["prospect_id"])
                self.first[p] = min(self.first.get(p, r["time"]), r["time"])
        # Entries are logged with the sandbox's clock; anything logged after this answer is
        # later than its "now". A little overlap is read twice and is harmless.
        self._since = float(answer["now"]) - 0.05
        return set(self.first)


# The two pipelines ----------------------------------------------------------------------


class Teardowns:
    """Stopping a side (a Celery worker's warm shutdown takes ~2 s) in the background, so it
    overlaps the next side's start-up; every measurement first waits for all of them, so no
    shutdown ever shares the CPU with one."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def add(self, teardown: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                teardown()
            except Exception as exc:
                _progress(f"teardown failed: {exc!r}")

        thread = threading.Thread(target=guarded, name="teardown")
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        while self._threads:
            self._threads.pop().join()


@contextmanager
def _ours(later: Teardowns, *, window_ms: int) -> Iterator[Side]:
    """outreach-sync: Producer -> Redis -> dispatcher -> drain task -> PATCH."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    client = redis.Redis.from_url(BENCH_REDIS_URL)
    env = {
        "REDIS_URL": BENCH_REDIS_URL,
        "BROKER_URL": BENCH_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": f"{prefix}-q",
        "COALESCE_WINDOW_MS": str(window_ms),
        "LOG_LEVEL": "WARNING",
        "PYTHONWARNINGS": _warnings(),
    }
    procs: list[subprocess.Popen[bytes]] = []
    sandbox: Sandbox | None = None
    producer: Producer | None = None
    try:
        sandbox = _sandbox()
        env["OUTREACH_API_URL"] = sandbox.api_url
        publish_sync(client, keys, _config())
        settings = Settings(
            redis_url=RedisDsn(BENCH_REDIS_URL),
            redis_key_prefix=prefix,
            coalesce_window_ms=window_ms,
        )
        producer = Producer(settings)
        procs.append(start_worker(env, name=f"{prefix}-ours", concurrency=CONCURRENCY))

        def send(prospects: Sequence[int]) -> None:
            assert producer is not None
            batch = producer.send(DEST, [_profile(p) for p in prospects])
            if batch.report.accepted != len(prospects):
                raise AssertionError(f"profiles not accepted: {batch.report.as_dict()}")

        def settled() -> bool:
            due = cast(int, client.zcard(keys.due(DEST)))
            return due + cast(int, client.zcard(keys.leases(DEST))) == 0

        side = Side(sandbox, procs[0], send, settled)
        _warm_up(side)
        yield side
    finally:
        later.add(lambda: _stop(procs, sandbox, client, prefix, producer))


@contextmanager
def _baseline(later: Teardowns) -> Iterator[Side]:
    """bench.baseline_app: ``patch.apply_async`` per update, one task each, no rate limit."""
    from bench.baseline_app import app, patch

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    queue = f"{prefix}-q"
    client = redis.Redis.from_url(BENCH_REDIS_URL)
    # BASELINE_RATE is set empty, not left out: the worker inherits this process's
    # environment, where another benchmark may have set it; Celery reads "" as no limit.
    env = {
        "BROKER_URL": BENCH_REDIS_URL,
        "CELERY_QUEUE": queue,
        "BASELINE_RATE": "",
        "PYTHONWARNINGS": _warnings(),
    }
    procs: list[subprocess.Popen[bytes]] = []
    sandbox: Sandbox | None = None
    try:
        sandbox = _sandbox()
        env["OUTREACH_API_URL"] = sandbox.api_url
        app.conf.broker_url = BENCH_REDIS_URL
        procs.append(
            start_worker(
                env, name=f"{prefix}-base", concurrency=CONCURRENCY, app="bench.baseline_app"
            )
        )

        def send(prospects: Sequence[int]) -> None:
            for p in prospects:
                patch.apply_async(args=(p, {"custom1": "realized"}), queue=queue)

        def settled() -> bool:
            # A task ends right after its PATCH is answered; the queue shows what is left.
            return cast(int, client.llen(queue)) == 0

        side = Side(sandbox, procs[0], send, settled)
        _warm_up(side)
        yield side
    finally:
        later.add(lambda: _stop(procs, sandbox, client, prefix))


def _stop(
    procs: list[subprocess.Popen[bytes]],
    sandbox: Sandbox | None,
    client: redis.Redis,
    prefix: str,
    producer: Producer | None = None,
) -> None:
    """The worker first (it may still write to Redis), then the sandbox, then every key."""
    try:
        kill_groups(procs)
        if sandbox is not None:
            sandbox.stop()
    finally:
        if producer is not None:
            producer.close()
        forget_run(client, prefix)
        client.close()


def _warm_up(side: Side) -> None:
    """One update end to end, so neither start-up nor first connections are measured."""
    log = RequestLog(side.sandbox)
    side.send([WARM_PROSPECT])
    wait_until(
        lambda: _alive(side) and WARM_PROSPECT in log.poll() and side.settled(),
        timeout_s=60,
        what="the worker to deliver its warm-up update",
        every_s=0.1,
    )


def _alive(side: Side) -> bool:
    if side.worker.poll() is not None:
        raise AssertionError(f"worker exited with {side.worker.returncode}")
    return True


def _warnings() -> str:
    return ",".join(w for w in (os.environ.get("PYTHONWARNINGS", ""), QUIET_ROOT) if w)


def _sandbox() -> Sandbox:
    return Sandbox("--quota-limit", str(QUOTA_LIMIT), "--quota-window-s", str(QUOTA_WINDOW_S))


def _config() -> Config:
    return parse_config(
        {
            "connections": [
                {
                    "id": "c",
                    "user": "test-user",
                    "access_token": "test-token",
                    "rate_limit": f"{QUOTA_LIMIT} per {QUOTA_WINDOW_S} seconds",
                }
            ],
            "destinations": [
                {"id": DEST, "name": "Bench", "connection": "c", "audiences": {"a": 1}}
            ],
        }
    )


def _profile(prospect: int) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": str(prospect)}]},
        "segmentMembership": {"ups": {"a": {"status": "realized"}}},
    }


# The worker's process tree --------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Celery's pool processes are its children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    return found


def _tree_cpu_s(pid: int) -> float:
    total_ticks = 0
    for p in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state is field 3, utime..cstime are fields 14-17.
        fields = stat.rsplit(")", 1)[1].split()
        total_ticks += sum(int(f) for f in fields[11:15])
    return total_ticks * CLOCK_TICK_S


def _tree_hwm_mb(pid: int) -> float:
    total_kb = 0
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total_kb += sum(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
    return total_kb / 1024


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
