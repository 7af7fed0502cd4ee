"""Ingestion throughput and Redis memory: outreach-sync's batch path against the obvious
alternative, one Celery task per event, both measured in the same run on the same Redis.

Rows (``run(smoke=...)``):

- events/s accepted through ``Producer.send`` in chunks of 1,000, against ``apply_async`` of
  one ``bench.baseline_app.patch`` task per event (enqueue only, no worker);
- events/s through the real HTTP API (a subprocess), NDJSON bodies of 1,000 profiles from 4
  concurrent clients, against the same per-event enqueue rate;
- Redis memory (INFO ``used_memory`` delta, taken right around our own writes: the Redis is
  shared) of 100,000 pending prospects, against 100,000 queued per-event Celery messages.
  Celery enqueues at about 1,000 messages/s here, too slow to queue 100,000 within the time
  budget: a sample of real messages, made by ``apply_async`` with prospects spread over the
  range, is read back and pushed again until the queue holds 100,000. A Redis list's memory
  depends only on its elements' sizes, so this is the memory of 100,000 such messages.

Everything lives in database 12 (``BENCH_REDIS_URL``) under a fresh per-run prefix and queue
name, and every key written (the Celery queue and its ``_kombu.binding*`` keys included) is
deleted, even on failure.
Progress goes to stderr; figures only through the returned rows.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

import aiohttp
import redis
import redis.asyncio as aioredis
from pydantic import RedisDsn

from app.admin.producer_keys import ProducerKeys
from app.cli.processes import stop_all
from app.cli.sample import EPOCH_MS, Sample, generate
from app.config.destinations import Config, parse_config
from app.core.keys import Keys
from app.core.settings import Settings
from app.ingest.producer import Producer
from app.store.prospects import Change, encode, merge_sync
from app.store.registry import publish_sync
from app.testing.harness import ROOT, forget_run, free_port, http_json, wait_until
from bench.table import Row
from bench.wiring import BENCH_REDIS_URL

#: Database 12 of the shared Redis, as every benchmark uses (bench.rate_adherence).
DEST = "bench"
#: Profiles per ``Producer.send`` call and per HTTP body; Redis commands per pipeline.
CHUNK = 1_000
HTTP_CLIENTS = 4
NDJSON = "application/x-ndjson"
#: Twenty audiences (realistic platform ids) in custom1..custom20, and three attributes.
AUDIENCES = {
    str(uuid.uuid5(uuid.NAMESPACE_URL, f"outreach-sync/bench/audience/{n}")): n
    for n in range(1, 21)
}
ATTRIBUTES = {"firstName": "firstName", "lastName": "lastName", "title": "title"}
FIRST_PROSPECT = 1001
#: Prospects per ``merge_sync`` call in the memory row (it splits them into scripts itself).
MERGE_CALL = 10_000
#: Coalescing window of the memory row: an hour, so nothing falls due while it is measured.
LONG_WINDOW_MS = 3_600_000
PER = 100_000  # memory is reported per this many prospects
MB = 1_000_000


@dataclass(frozen=True)
class Sizes:
    events: int  # profile events sent through the batch API, and again over HTTP
    baseline_max: int  # per-event Celery enqueues, at most ...
    baseline_s: float  # ... and for at most this long
    pending: int  # prospects of the memory row
    captured: int  # real Celery messages made for the memory baseline


FULL = Sizes(events=100_000, baseline_max=1_000_000, baseline_s=5.0, pending=PER, captured=1_000)
SMOKE = Sizes(events=2_000, baseline_max=300, baseline_s=5.0, pending=5_000, captured=100)


def _say(message: str) -> None:
    print(f"ingest bench: {message}", file=sys.stderr, flush=True)


def run(*, smoke: bool) -> list[Row]:
    sizes = SMOKE if smoke else FULL
    run_id = f"ib{uuid.uuid4().hex[:10]}"  # in every key and queue name of this run
    client = redis.Redis.from_url(BENCH_REDIS_URL)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryFile() as api_log:
        try:
            return _run(sizes, run_id, client, procs, api_log)
        finally:
            gc.unfreeze()
            stop_all(procs)
            _close_celery()
            removed = forget_run(client, run_id)
            client.close()
            _say(f"final cleanup: {removed:,} keys were left to delete")


def _run(
    sizes: Sizes,
    run_id: str,
    client: redis.Redis,
    procs: list[subprocess.Popen[bytes]],
    api_log: IO[bytes],
) -> list[Row]:
    batch_prefix, http_prefix, memory_prefix = f"{run_id}b", f"{run_id}h", f"{run_id}m"
    config = _config()
    for prefix in (batch_prefix, http_prefix):
        publish_sync(client, Keys(prefix), config)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    procs.append(_start_api(port, http_prefix, api_log))  # starts while the sample is made

    _say(f"generating {sizes.events:,} profile events")
    sample = generate(
        events=sizes.events, prospects=max(1, sizes.events // 10), audiences=AUDIENCES
    )
    per_event = _would_be(sample)
    bodies = [_ndjson(sample.profiles[i : i + CHUNK]) for i in range(0, sizes.events, CHUNK)]
    # The sample and its bodies are input, not work: a producer streams its events rather
    # than holding 100,000 of them. Frozen out of the garbage collector, they no longer make
    # every full collection of either path (ours or the baseline) traverse them all, a third
    # of the batch API's time otherwise. Unfrozen when the run ends.
    gc.freeze()
    _wait_api(procs[0], api_url, api_log)

    _say(f"batch API: {sizes.events:,} events in chunks of {CHUNK:,}")
    batch_rate = _batch_rate(batch_prefix, sample)
    forget_run(client, batch_prefix)

    _say(f"per-event Celery enqueue: up to {sizes.baseline_max:,} or {sizes.baseline_s:g} s")
    celery_rate, enqueued = _celery_rate(
        client, f"{run_id}-q1", per_event, limit=sizes.baseline_max, seconds=sizes.baseline_s
    )
    forget_run(client, f"{run_id}-q1")
    _say(f"  {enqueued:,} tasks enqueued")

    _say(f"HTTP NDJSON: {sizes.events:,} events, {HTTP_CLIENTS} clients")
    key = asyncio.run(_producer_key(http_prefix))
    url = f"{api_url}/v1/destinations/{DEST}/profiles"
    http_rate = _http_rate(url, bodies, sizes.events, key)
    stop_all(procs)
    forget_run(client, http_prefix)

    _say(f"memory: {sizes.pending:,} pending prospects")
    ours_bytes = _pending_memory(client, Keys(memory_prefix), sizes.pending)
    forget_run(client, memory_prefix)
    _say(f"memory: {sizes.pending:,} queued Celery messages")
    celery_bytes = _celery_memory(
        client, f"{run_id}-q3", sizes.pending, captured=min(sizes.captured, sizes.pending)
    )
    forget_run(client, f"{run_id}-q3")

    scale = PER / sizes.pending / MB
    baseline = "one Celery task per event (apply_async, enqueue only)"
    return [
        Row(
            "ingestion",
            "events/s, Python batch API",
            batch_rate,
            celery_rate,
            baseline,
            goal=">= 20,000/s and >= 10x the per-event baseline",
        ),
        Row(
            "ingestion",
            f"events/s, HTTP NDJSON, {HTTP_CLIENTS} clients",
            http_rate,
            celery_rate,
            "the per-event Celery enqueue rate above (same measurement)",
        ),
        Row(
            "cost",
            f"Redis MB per {PER:,} pending prospects (used_memory delta)",
            ours_bytes * scale,
            celery_bytes * scale,
            f"{PER:,} queued per-event Celery task messages (real ones, re-pushed)",
            higher_is_better=False,
        ),
    ]


# Setup ----------------------------------------------------------------------------------


def _config() -> Config:
    return parse_config(
        {
            "connections": [{"id": "bench", "user": "bench-user", "access_token": "bench-token"}],
            "destinations": [
                {
                    "id": DEST,
                    "name": "Ingestion bench",
                    "connection": "bench",
                    "audiences": AUDIENCES,
                    "attributes": ATTRIBUTES,
                }
            ],
        }
    )


def _settings(prefix: str) -> Settings:
    return Settings(redis_url=RedisDsn(BENCH_REDIS_URL), redis_key_prefix=prefix)


def _would_be(sample: Sample) -> list[tuple[int, dict[str, Any]]]:
    """(prospect, fields) of every accepted event: what one task per event would send."""
    per_order: dict[int, tuple[int, dict[str, Any]]] = {}
    for order, prospect, name, _ts, value in sample.notes:
        per_order.setdefault(order, (prospect, {}))[1][name] = value
    return [per_order[order] for order in sorted(per_order)]


def _ndjson(profiles: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(p, separators=(",", ":")) + "\n" for p in profiles).encode()


def _used_memory(client: redis.Redis) -> int:
    info = cast("dict[str, Any]", client.info("memory"))
    return int(info["used_memory"])


# The HTTP API subprocess ----------------------------------------------------------------


def _start_api(port: int, prefix: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": BENCH_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "API_HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        # The producers' rate bound is not what this row measures.
        "PRODUCER_RATE_LIMIT": "100000/second",
    }
    cmd = [sys.executable, "-m", "app", "api", "--port", str(port)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _wait_api(proc: subprocess.Popen[bytes], url: str, log: IO[bytes]) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the API exited with {proc.returncode}:\n{tail}")
        try:
            http_json(f"{url}/healthz")
        except OSError:
            return False
        return True

    wait_until(answers, timeout_s=30, what="the API to answer /healthz")


# Throughput -----------------------------------------------------------------------------


def _batch_rate(prefix: str, sample: Sample) -> float:
    """Events/s through ``Producer.send`` in chunks of ``CHUNK`` (validation, coalescing,
    the Lua merge into Redis and the counters: everything a producer waits for)."""
    producer = Producer(_settings(prefix))
    profiles = sample.profiles
    accepted = 0
    try:
        t0 = time.perf_counter()
        for start in range(0, len(profiles), CHUNK):
            batch = producer.send(DEST, profiles[start : start + CHUNK], start=start)
            accepted += batch.report.accepted
        seconds = time.perf_counter() - t0
    finally:
        producer.close()
    if accepted != len(profiles) - sample.excluded:
        raise RuntimeError(f"batch API accepted {accepted} of {len(profiles)} events")
    return len(profiles) / seconds


def _celery_rate(
    client: redis.Redis,
    queue: str,
    events: Sequence[tuple[int, dict[str, Any]]],
    *,
    limit: int,
    seconds: float,
) -> tuple[float, int]:
    """Tasks/s of ``apply_async``, one per event, into ``queue`` (no worker consumes it)."""
    from bench.baseline_app import app, patch

    if not events:
        raise RuntimeError("no accepted event to enqueue")
    app.conf.broker_url = BENCH_REDIS_URL
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    for prospect, fields in itertools.cycle(events):
        patch.apply_async(args=(prospect, fields), queue=queue)
        sent += 1
        if sent >= limit or time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    queued = cast("int", client.llen(queue))
    if queued != sent:
        raise RuntimeError(f"{sent} tasks enqueued but {queued} in the queue")
    return sent / elapsed, sent


def _close_celery() -> None:
    """Release the baseline app's broker connections (Celery reopens them on next use)."""
    module = sys.modules.get("bench.baseline_app")
    if module is not None:
        module.app.close()


async def _producer_key(prefix: str) -> str:
    """A producer API key for the bench destination (the HTTP API refuses requests without)."""
    client = aioredis.from_url(BENCH_REDIS_URL)
    try:
        return (await ProducerKeys(client, Keys(prefix)).create("bench", [DEST]))[1]
    finally:
        await client.aclose()


def _http_rate(url: str, bodies: Sequence[bytes], events: int, key: str) -> float:
    received, seconds = asyncio.run(_post_all(url, bodies, key))
    if received != events:
        raise RuntimeError(f"the API received {received} of {events} events")
    return events / seconds


async def _post_all(url: str, bodies: Sequence[bytes], key: str) -> tuple[int, float]:
    """``HTTP_CLIENTS`` clients, each with its own session, POST the bodies until none are
    left; returns the profiles the API reports received and the seconds it took."""
    pending = iter(bodies)  # shared: each body is taken by exactly one client
    headers = {"Content-Type": NDJSON, "Authorization": f"Bearer {key}"}

    async def client(session: aiohttp.ClientSession) -> int:
        received = 0
        for body in pending:
            async with session.post(url, data=body, headers=headers) as resp:
                doc = await resp.json()
                if resp.status != 202:
                    raise RuntimeError(f"API answered {resp.status}: {str(doc)[:300]}")
                received += int(doc["received"])
        return received

    sessions = [aiohttp.ClientSession() for _ in range(HTTP_CLIENTS)]
    try:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(client(s) for s in sessions))
        seconds = time.perf_counter() - t0
    finally:
        for session in sessions:
            await session.close()
    return sum(counts), seconds


# Memory ---------------------------------------------------------------------------------


def _pending_memory(client: redis.Redis, keys: Keys, n: int) -> int:
    """Bytes ``used_memory`` grows by while one change of two fields is merged for each of
    ``n`` prospects (pending and versions hashes, due and first-seen entries, counters)."""
    realized, name = encode("realized"), encode("Ada")
    changes: dict[int, list[Change]] = {
        FIRST_PROSPECT + i: [("custom1", realized, EPOCH_MS), ("firstName", name, EPOCH_MS)]
        for i in range(n)
    }
    items = list(changes.items())
    calls = [dict(items[s : s + MERGE_CALL]) for s in range(0, n, MERGE_CALL)]
    publish_sync(client, keys, _config())  # merge.lua takes changes for known destinations only
    now = int(time.time() * 1000)
    before = _used_memory(client)
    for call in calls:
        merge_sync(client, keys, DEST, call, now_ms=now, window_ms=LONG_WINDOW_MS)
    after = _used_memory(client)
    due = keys.due(DEST)
    if cast("int", client.zcard(due)) != n or cast("int", client.zcount(due, "-inf", now)):
        raise RuntimeError(f"expected {n} pending prospects, none of them due")
    return after - before


def _celery_memory(client: redis.Redis, queue: str, n: int, *, captured: int) -> int:
    """Bytes ``used_memory`` grows by while ``queue`` fills with ``n`` per-event Celery
    messages (two fields each): ``captured`` real ones from ``apply_async``, for prospects
    spread over the range so their sizes are representative, pushed again in turn."""
    from bench.baseline_app import app, patch

    app.conf.broker_url = BENCH_REDIS_URL
    fields = {"custom1": "realized", "firstName": "Ada"}
    step = max(1, n // captured)
    with app.producer_or_acquire() as producer, producer.batch(CHUNK):
        for i in range(captured):
            args = (FIRST_PROSPECT + i * step, fields)
            patch.apply_async(args=args, queue=queue, producer=producer)
    messages = cast("list[bytes]", client.lrange(queue, 0, -1))
    client.delete(queue)
    if len(messages) != captured:
        raise RuntimeError(f"{captured} tasks enqueued but {len(messages)} in the queue")
    pushes = [
        [messages[i % captured] for i in range(start, min(n, start + CHUNK))]
        for start in range(0, n, CHUNK)
    ]
    before = _used_memory(client)
    for start in range(0, len(pushes), 10):  # ~10 MB per pipeline
        pipe = client.pipeline(transaction=False)
        for values in pushes[start : start + 10]:
            pipe.lpush(queue, *values)
        pipe.execute()
    after = _used_memory(client)
    queued = cast("int", client.llen(queue))
    if queued != n:
        raise RuntimeError(f"{n} messages pushed but {queued} in the queue")
    size = cast("int | None", client.memory_usage(queue, samples=0)) or 0
    _say(f"  queue holds {size / MB:,.1f} MB by MEMORY USAGE ({(after - before) / MB:,.1f} delta)")
    return after - before
