"""Draining destinations: the dispatcher wakes drains; a drain claims due prospects and
routes them to two senders — bulk for groups of identical changes, then one PATCH per
prospect for the rest — and each outcome is settled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.delivery.dispatcher import Dispatcher, live_workers
    from app.delivery.drain import Deliverer
    from app.delivery.grouping import group, mostly_one_group
    from app.delivery.lot import LeaseLost, Lot
    from app.delivery.outcomes import Outcomes, RetryPolicy

_EXPORTS = {
    "Deliverer": "app.delivery.drain",
    "Dispatcher": "app.delivery.dispatcher",
    "LeaseLost": "app.delivery.lot",
    "Lot": "app.delivery.lot",
    "Outcomes": "app.delivery.outcomes",
    "RetryPolicy": "app.delivery.outcomes",
    "group": "app.delivery.grouping",
    "live_workers": "app.delivery.dispatcher",
    "mostly_one_group": "app.delivery.grouping",
}

__all__ = [
    "Deliverer",
    "Dispatcher",
    "LeaseLost",
    "Lot",
    "Outcomes",
    "RetryPolicy",
    "group",
    "live_workers",
    "mostly_one_group",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
