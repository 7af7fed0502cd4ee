"""Stopping child processes (the demo's services, the benchmarks' workers) politely."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


def stop_all(procs: Sequence[subprocess.Popen[bytes]], *, timeout_s: float = 15) -> None:
    """SIGTERM every process still running, wait for each, and SIGKILL the ones that hang."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
