"""Factories for the real things: Redis (own database, own key prefix), the sandbox over HTTP,
Celery worker processes. Everything a test starts it stops, and every key it writes it deletes."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.core.keys import Keys
from app.core.settings import Settings
from app.delivery.dispatcher import live_workers
from app.testing.harness import (
    ROOT,
    Sandbox,
    forget_run,
    free_port,
    http_json,
    kill_groups,
    start_worker,
    wait_until,
)

#: The suite's own database on the shared Redis; keys carry a per-test prefix as well.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

__all__ = [
    "ROOT",
    "Sandbox",
    "free_port",
    "http_json",
    "make_settings",
    "settings_env",
    "wait_until",
]


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


def settings_env(prefix: str, sandbox: Sandbox | None, **extra: str) -> dict[str, str]:
    env = {
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": f"{prefix}-q",
        "COALESCE_WINDOW_MS": "300",
        "LOG_LEVEL": "WARNING",
    }
    if sandbox is not None:
        env["OUTREACH_API_URL"] = sandbox.api_url
        env["OUTREACH_TOKEN_URL"] = f"{sandbox.url}/oauth/token"
        env["OUTREACH_AUTHORIZE_URL"] = f"{sandbox.url}/oauth/authorize"
    env.update(extra)
    return env


def make_settings(env: dict[str, str]) -> Settings:
    return Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]


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
            client = redis.Redis.from_url(env.get("REDIS_URL", TEST_REDIS_URL))
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


# A Redis of a test's own, to stop and start: a crash, a restart, a failover.
REDIS_CONF = ROOT / "deploy" / "redis.conf"


class LocalRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", str(REDIS_CONF), "--port", str(self.port), "--bind", "127.0.0.1"]
        # "always": the test kills Redis right after writing; production uses everysec.
        cmd += ["--dir", str(self.dir), "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), timeout_s=10, what="redis-server to start")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # a crash, not a clean shutdown
        self.proc.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()
