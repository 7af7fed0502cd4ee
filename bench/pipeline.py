"""The whole pipeline for a benchmark run: a sandbox, a destination, N worker processes."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from app.config.destinations import parse_config
from app.core.keys import Keys
from app.core.settings import Settings
from app.ingest.producer import Producer
from app.testing.harness import Sandbox, forget_run, kill_groups, start_worker
from bench.wiring import BENCH_REDIS_URL

DEST = "bench"


@dataclass
class Pipeline:
    sandbox: Sandbox
    env: dict[str, str]
    keys: Keys
    client: redis.Redis
    producer: Producer
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_workers(self, n: int, *, concurrency: int = 1) -> None:
        prefix = self.env["REDIS_KEY_PREFIX"]
        for _ in range(n):
            name = f"{prefix}-{len(self.workers)}"
            self.workers.append(start_worker(self.env, name=name, concurrency=concurrency))

    def idle(self) -> bool:
        return (
            self.client.zcard(self.keys.due(DEST)) + self.client.zcard(self.keys.leases(DEST)) == 0
        )


@contextmanager
def pipeline(
    *,
    sandbox_args: tuple[str, ...],
    rate_limit: str,
    audiences: Mapping[str, int],
    attributes: Mapping[str, str] | None = None,
    destination: Mapping[str, Any] | None = None,
    **settings: str,
) -> Iterator[Pipeline]:
    """Everything started here is stopped, and every key written deleted, on the way out."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    sandbox = Sandbox(*sandbox_args)
    env = {
        "REDIS_URL": BENCH_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": f"{prefix}-q",
        "OUTREACH_API_URL": sandbox.api_url,
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    client = redis.Redis.from_url(BENCH_REDIS_URL)
    conn = {"id": "c", "user": "test-user", "access_token": "test-token", "rate_limit": rate_limit}
    dest: dict[str, Any] = {"id": DEST, "name": "Bench", "connection": "c"}
    dest |= {"audiences": dict(audiences), "attributes": dict(attributes or {})}
    dest |= dict(destination or {})
    from app.store.registry import publish_sync

    keys = Keys(prefix)
    publish_sync(client, keys, parse_config({"connections": [conn], "destinations": [dest]}))
    producer = Producer(Settings(**{k.lower(): v for k, v in env.items()}))  # type: ignore[arg-type]
    run = Pipeline(sandbox, env, keys, client, producer)
    try:
        yield run
    finally:
        kill_groups(run.workers)
        sandbox.stop()
        producer.close()
        forget_run(client, prefix)
        client.close()
