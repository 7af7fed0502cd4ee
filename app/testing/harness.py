"""Starting the real things as processes: the sandbox and Celery workers, for the tests and the
benchmarks (it ships in the package, like dramatiq's StubBroker, so neither imports the other)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import redis

from app.cli.processes import stop_all

__all__ = [
    "ROOT",
    "Sandbox",
    "forget_run",
    "free_port",
    "http_json",
    "kill_groups",
    "start_worker",
    "stop_all",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]


def forget_run(client: redis.Redis, part: str) -> int:
    """Delete what a run wrote to the shared Redis (its workers stopped first), ``part`` being
    a string unique to the run found in every key and queue name it used: its keys, its
    members of kombu's shared ``_kombu.binding*`` sets, and its entries in kombu's global
    ``unacked`` hash (a worker killed outright leaves its messages there, and any later
    consumer of the database would restore them into the run's deleted queue). Returns the
    number of keys deleted."""
    needle = part.encode()
    for tag, raw in client.hscan_iter("unacked"):
        if needle in raw:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    for key in client.scan_iter(match="_kombu.binding*", count=1000):
        if client.type(key) == b"set":
            mine = [m for m in cast("set[bytes]", client.smembers(key)) if needle in m]
            if mine:
                client.srem(key, *mine)
    names = list(client.scan_iter(match=f"*{part}*", count=10_000))
    for start in range(0, len(names), 1000):
        client.delete(*names[start : start + 1000])
    return len(names)


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


class Sandbox:
    """A sandbox process on a free port; ``args`` are the sandbox CLI's options."""

    def __init__(self, *args: str, token: str = "test-token=test-user") -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api/v2"
        cmd = [sys.executable, "-m", "app.sandbox", "--host", "127.0.0.1", "--port", str(port)]
        self.proc = subprocess.Popen(
            [*cmd, "--static-token", token, *args], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        wait_until(self._answers, timeout_s=20, what="the sandbox to listen")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sandbox exited with {self.proc.returncode}")
        try:
            self.stats()
        except OSError:
            return False
        return True

    def get(self, path: str) -> Any:
        return http_json(f"{self.url}{path}")

    def post(self, path: str, body: Any = None) -> Any:
        return http_json(f"{self.url}{path}", body if body is not None else {}, method="POST")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_sandbox/stats")
        return result

    def prospects(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self.get("/_sandbox/prospects").items()}

    def patches(self) -> list[dict[str, Any]]:
        log = self.get("/_sandbox/requests?since=0")["requests"]
        return [r for r in log if r["method"] == "PATCH"]

    def seed(self, prospects: list[dict[str, Any]]) -> list[int]:
        """Store prospects (``emails``, ``attributes``, ``updated_at``…) in one call."""
        ids: list[int] = self.post("/_sandbox/prospects", {"prospects": prospects})["ids"]
        return ids

    def emails(self, *, duplicates: bool = False) -> dict[str, list[int]]:
        """Lower-cased email -> prospect ids; only shared emails with ``duplicates``."""
        query = "?duplicates=true" if duplicates else ""
        found: dict[str, list[int]] = self.get(f"/_sandbox/emails{query}")["emails"]
        return found

    def arm_fault(self, route: str, kind: str, **options: Any) -> None:
        """Arm a fault rule (``rate``, ``count``, ``status``); see docs/sandbox.md."""
        self.post("/_sandbox/faults", {"route": route, "kind": kind, **options})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def kill_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL each process's group (started with ``own_group``), or the process alone."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        proc.wait()


def start_worker(
    env: dict[str, str],
    *,
    name: str,
    concurrency: int = 1,
    app: str = "workers.celery_app",
    own_group: bool = True,
    output: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """A real Celery worker process of ``app`` with ``env`` added to this environment;
    ``own_group`` puts it and its pool in a process group of their own, so that
    :func:`kill_groups` ends it whole (a graceful stop costs about 3 s a worker).
    ``output``: where its stdout and stderr go (default: this process's)."""
    cmd = [sys.executable, "-m", "celery", "-q", "-A", app, "worker", "-c", str(concurrency)]
    cmd += ["--loglevel", "WARNING", "-n", f"{name}@%h"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **env},
        start_new_session=own_group,
        stdout=output,
        stderr=None if output is None else subprocess.STDOUT,
    )
