"""``make run``'s demo stops, every child with it, on Ctrl-C (SIGINT to the terminal's process
group), on SIGTERM, and at once on a second Ctrl-C (issue 14, defect 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import ROOT, TEST_REDIS_URL, free_port

SERVING = "serving; Ctrl-C stops everything"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def demo(prefix: str, rclient: redis.Redis) -> Iterator[subprocess.Popen[str]]:
    """The demo in its own process group, as a terminal runs it, once it is serving (its keys
    go with ``rclient``'s cleanup, after every process has been killed)."""
    env = {
        **os.environ,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": f"{prefix}-q",
        "DEMO_SANDBOX_PORT": str(free_port()),
        "DEMO_API_PORT": str(free_port()),
    }
    cmd = [sys.executable, "-m", "app", "demo"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    spawned: set[int] = set()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            spawned |= descendants(proc.pid)
            if SERVING in line:
                break
        assert proc.poll() is None, f"the demo exited with {proc.returncode} before serving"
        yield proc
    finally:
        for pid in spawned | descendants(proc.pid) | {proc.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("signals", "group", "within_s"),
    [
        ((signal.SIGINT,), True, 12),
        ((signal.SIGINT, signal.SIGINT), True, 3),
        ((signal.SIGTERM,), False, 12),
    ],
    ids=["ctrl-c", "ctrl-c-twice", "sigterm-to-the-demo"],
)
def test_the_demo_and_every_child_stop(
    demo: subprocess.Popen[str], signals: tuple[signal.Signals, ...], group: bool, within_s: float
) -> None:
    """Ctrl-C is SIGINT to the terminal's whole foreground group; a supervisor's or `kill`'s
    SIGTERM reaches the demo alone."""
    children = descendants(demo.pid)
    assert len(children) >= 3  # the sandbox, the API, the worker (and its pool)
    for sig in signals:
        if group:
            os.killpg(demo.pid, sig)
        else:
            os.kill(demo.pid, sig)
        time.sleep(0.2)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(alive(p) for p in children | {demo.pid}):
        time.sleep(0.1)
    left = sorted(p for p in children | {demo.pid} if alive(p))
    assert left == [], f"still running {within_s} s after {[s.name for s in signals]}: {left}"
