"""``outreach-sync``: the command line for producers and operators, and the demo (``make run``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.cli.demo import SAMPLE_FILE, demo_sample
    from app.cli.main import parse
    from app.cli.processes import stop_all
    from app.cli.sample import EPOCH_MS, Sample, generate

_EXPORTS = {
    "EPOCH_MS": "app.cli.sample",
    "SAMPLE_FILE": "app.cli.demo",
    "Sample": "app.cli.sample",
    "demo_sample": "app.cli.demo",
    "generate": "app.cli.sample",
    "parse": "app.cli.main",
    "stop_all": "app.cli.processes",
}

__all__ = [
    "EPOCH_MS",
    "SAMPLE_FILE",
    "Sample",
    "demo_sample",
    "generate",
    "parse",
    "stop_all",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
