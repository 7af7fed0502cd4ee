"""The real things started as processes (the sandbox, Celery workers) for tests and benchmarks.
No production code imports this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
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

_EXPORTS = {
    "ROOT": "app.testing.harness",
    "Sandbox": "app.testing.harness",
    "forget_run": "app.testing.harness",
    "free_port": "app.testing.harness",
    "http_json": "app.testing.harness",
    "kill_groups": "app.testing.harness",
    "start_worker": "app.testing.harness",
    "wait_until": "app.testing.harness",
}

__all__ = [
    "ROOT",
    "Sandbox",
    "forget_run",
    "free_port",
    "http_json",
    "kill_groups",
    "start_worker",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
