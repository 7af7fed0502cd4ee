"""Rate adherence: a backlog larger than several quota windows, drained by N worker processes
against the sandbox's scaled-down quota, by outreach-sync and by Celery's per-worker rate_limit."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis

from app.testing.harness import Sandbox, forget_run, kill_groups, start_worker, wait_until
from bench.pipeline import BENCH_REDIS_URL, DEST, pipeline


@dataclass(frozen=True)
class Run:
    label: str
    requests: int
    ok: int
    rate_limited: int
    delivered: int
    prospects: int
    used_share: float
    seconds: float

    @property
    def lost(self) -> int:
        return self.prospects - self.delivered


@dataclass(frozen=True)
class Quota:
    limit: int
    window_s: float

    @property
    def rate(self) -> float:
        return self.limit / self.window_s


def used_share(patches: list[dict[str, Any]], quota: Quota) -> float:
    """Accepted requests per full window (first and last are partly idle) over the allowance."""
    per = Counter(int(r["time"] // quota.window_s) for r in patches if r["status"] == 200)
    windows = sorted(per)[1:-1]
    if not windows:
        return float("nan")
    full = range(windows[0], windows[-1] + 1)
    return sum(per[w] for w in full) / (quota.limit * len(full))


def _result(label: str, sandbox: Sandbox, quota: Quota, prospects: int, t0: float) -> Run:
    patches = sandbox.patches()
    statuses = Counter(r["status"] for r in patches)
    return Run(
        label=label,
        requests=len(patches),
        ok=statuses[200],
        rate_limited=statuses[429],
        delivered=len(sandbox.prospects()),
        prospects=prospects,
        used_share=used_share(patches, quota),
        seconds=time.monotonic() - t0,
    )


def _sandbox(quota: Quota) -> Sandbox:
    return Sandbox("--quota-limit", str(quota.limit), "--quota-window-s", str(quota.window_s))


def _clean(prefix: str) -> None:
    client = redis.Redis.from_url(BENCH_REDIS_URL)
    forget_run(client, prefix)
    client.close()


def run_ours(*, workers: int, quota: Quota, prospects: int) -> Run:
    rate = f"{quota.limit} per {quota.window_s:g} seconds"
    with pipeline(
        sandbox_args=("--quota-limit", str(quota.limit), "--quota-window-s", str(quota.window_s)),
        rate_limit=rate,
        audiences={"a": 1},
        COALESCE_WINDOW_MS="0",
        CLAIM_BATCH="10",
    ) as run:
        run.start_workers(workers)
        t0 = time.monotonic()
        run.producer.send(DEST, [_profile(p) for p in range(prospects)])

        def drained() -> bool:
            return run.idle() and len(run.sandbox.prospects()) == prospects

        wait_until(drained, timeout_s=_timeout(quota, prospects), what="the backlog", every_s=0.2)
        return _result(f"outreach-sync, {workers} workers", run.sandbox, quota, prospects, t0)


def run_celery_rate_limit(*, workers: int, quota: Quota, prospects: int, per_worker: float) -> Run:
    """Celery's ``rate_limit`` set to ``per_worker`` tasks/s on each of ``workers`` workers."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    sandbox = _sandbox(quota)
    env = {
        "BROKER_URL": BENCH_REDIS_URL,
        "CELERY_QUEUE": f"{prefix}-q",
        "OUTREACH_API_URL": sandbox.api_url,
        "BASELINE_RATE": f"{per_worker * 60:g}/m",
        "BASELINE_RETRY_AFTER_S": f"{quota.window_s:g}",
    }
    procs = [
        start_worker(env, name=f"{prefix}-{i}", app="bench.baseline_app") for i in range(workers)
    ]
    try:
        # Only the workers need ``env``; the enqueuing side is told broker and queue here.
        from bench.baseline_app import app, patch

        app.conf.broker_url = BENCH_REDIS_URL
        app.conf.task_default_queue = env["CELERY_QUEUE"]
        t0 = time.monotonic()
        for p in range(prospects):
            patch.apply_async(args=(5000 + p, {"custom1": "realized"}), queue=env["CELERY_QUEUE"])
        _wait_quiet(sandbox, quota, prospects)
        label = f"Celery rate_limit {per_worker:g}/s per worker, {workers} workers"
        return _result(label, sandbox, quota, prospects, t0)
    finally:
        kill_groups(procs)
        sandbox.stop()
        _clean(prefix)


def _wait_quiet(sandbox: Sandbox, quota: Quota, prospects: int) -> None:
    """Until every update landed, or nothing was sent for longer than the retries wait."""
    deadline = time.monotonic() + _timeout(quota, prospects)
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if len(sandbox.prospects()) == prospects:
            return
        n = len(sandbox.patches())
        if n != seen:
            seen, since = n, time.monotonic()
        elif time.monotonic() - since > 3.5 * quota.window_s:
            return
        time.sleep(0.3)


def _timeout(quota: Quota, prospects: int) -> float:
    return 30 + 3 * quota.window_s * prospects / quota.limit


def _profile(p: int) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": str(5000 + p)}]},
        "segmentMembership": {"ups": {"a": {"status": "realized"}}},
    }
