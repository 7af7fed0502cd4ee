"""Fixtures: factories for the real things, Redis (own database, own key prefix), the sandbox
over HTTP, Celery worker processes, API processes. Everything a test starts it stops, and
every key it writes it deletes. Helpers a test calls live in ``tests/support.py``."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from redis.cluster import RedisCluster

from app.core.keys import Keys
from app.delivery.dispatcher import live_workers
from app.sandbox import SandboxConfig, make_app
from app.testing.cluster import LocalCluster, missing_binaries
from app.testing.harness import forget_run, kill_groups, start_worker
from tests.support import (
    SANDBOX_TOKEN,
    TEST_REDIS_URL,
    Api,
    LiveSandbox,
    LocalRedis,
    ManualClock,
    Sandbox,
    start_api,
    wait_until,
)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rclient(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    forget_run(client, prefix)
    client.close()


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(*args: str) -> Sandbox:
        started.append(Sandbox(*args))
        return started[-1]

    yield start
    for sb in started:
        sb.stop()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory()


@pytest.fixture
async def live_sandbox() -> AsyncIterator[Callable[..., Awaitable[LiveSandbox]]]:
    """Starts sandboxes in this process on ephemeral ports (config as keywords; the token
    ``SANDBOX_TOKEN`` acts for user alice), each with a clock the test moves."""
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def start(**config: Any) -> LiveSandbox:
        config.setdefault("static_tokens", {SANDBOX_TOKEN: "alice"})
        clock = ManualClock()
        runner = web.AppRunner(make_app(SandboxConfig(**config), clock=clock), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return LiveSandbox(f"http://{host}:{port}", session, clock)

    yield start
    await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def worker_factory(prefix: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        env: dict[str, str],
        *,
        concurrency: int = 2,
        name: str = "w",
        own_group: bool = True,
        ready: bool = True,
    ) -> subprocess.Popen[bytes]:
        """A worker process; with ``ready`` (default) it returns once the worker's dispatcher
        beats, so a test's clock does not start while the worker is still importing."""
        hostname = f"{prefix}-{name}@{socket.gethostname()}"
        worker = start_worker(
            env, name=f"{prefix}-{name}", concurrency=concurrency, own_group=own_group
        )
        procs.append(worker)
        if ready:
            url = env.get("REDIS_URL", TEST_REDIS_URL)
            cluster = env.get("REDIS_CLUSTER") == "true"
            client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
            keys = Keys(env.get("REDIS_KEY_PREFIX", prefix))
            try:
                wait_until(
                    lambda: worker.poll() is not None or hostname in live_workers(client, keys),
                    timeout_s=60,
                    what=f"worker {hostname} to start",
                )
            finally:
                client.close()
            assert worker.poll() is None, f"worker {hostname} exited with {worker.returncode}"
        return worker

    yield start
    # Killed outright, each with its pool (its own process group): a graceful stop costs about
    # 3 s per worker (billiard's pool children sleep a second on exit) and has tests of its own;
    # forget_run then clears what a killed worker leaves (its unacked messages included).
    kill_groups(procs)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    forget_run(client, prefix)  # the test's broker queue and Celery's bookkeeping for it
    client.close()


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture
def api_factory(prefix: str, rclient: redis.Redis) -> Iterator[Callable[..., Api]]:
    """API processes, stopped before ``rclient`` deletes the test's keys (an authorize URL
    made and never followed leaves its ``state`` key, which would otherwise outlive the test)."""
    started: list[Api] = []

    def start(sandbox: Sandbox, **extra: str) -> Api:
        started.append(start_api(prefix, sandbox, **extra))
        return started[-1]

    yield start
    for api in started:
        api.proc.terminate()
        api.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster of three primaries, started once per test process (about 2 s)."""
    if missing := missing_binaries():
        why = f"{' and '.join(missing)} not installed: no local Redis Cluster to test against"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (deploy/ensure-redis.sh installs them when run as root)")
        pytest.skip(why)
    cluster = LocalCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster, prefix: str) -> Iterator[RedisCluster]:
    """A client of the cluster; the test's keys (its prefix) are deleted from every node."""
    client = redis_cluster.client()
    yield client
    forget_run(client, prefix)  # type: ignore[arg-type]
    client.close()


@pytest.fixture
async def aclient(rclient: redis.Redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()
