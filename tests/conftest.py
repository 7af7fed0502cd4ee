"""Factories for the real things: Redis (own database, own key prefix), the sandbox over HTTP,
Celery worker processes. Everything a test starts it stops, and every key it writes it deletes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
#: The suite's own database on the shared Redis; keys carry a per-test prefix as well.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, body: Any = None, method: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, what: str, every_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rclient(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


class Sandbox:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api/v2"
        self.proc = proc

    def get(self, path: str) -> Any:
        return http_json(f"{self.url}{path}")

    def post(self, path: str, body: Any = None) -> Any:
        return http_json(f"{self.url}{path}", body if body is not None else {}, method="POST")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_sandbox/stats")
        return result

    def prospects(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self.get("/_sandbox/prospects").items()}


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(*args: str) -> Sandbox:
        port = free_port()
        cmd = [sys.executable, "-m", "app.sandbox", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--static-token", "test-token=test-user", *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        sb = Sandbox(port, proc)
        started.append(sb)
        wait_until(lambda: _answers(sb), timeout_s=20, what="the sandbox to listen")
        return sb

    yield start
    for sb in started:
        sb.proc.terminate()
        sb.proc.wait(timeout=10)


def _answers(sb: Sandbox) -> bool:
    if sb.proc.poll() is not None:
        raise AssertionError(f"sandbox exited with {sb.proc.returncode}")
    try:
        sb.stats()
    except OSError:
        return False
    return True


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
        env: dict[str, str], *, concurrency: int = 2, name: str = "w"
    ) -> subprocess.Popen[bytes]:
        full = {**os.environ, **env}
        cmd = [sys.executable, "-m", "celery", "-q", "-A", "workers.celery_app", "worker"]
        cmd += ["-c", str(concurrency), "--loglevel", "WARNING", "-n", f"{prefix}-{name}@%h"]
        cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # The suite's own broker queue and Celery's bookkeeping for it.
    client = redis.Redis.from_url(TEST_REDIS_URL)
    for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        client.delete(key)
    client.close()
