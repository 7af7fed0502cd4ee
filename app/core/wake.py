"""The wake signal: dispatchers block on one list (``Keys.wake``); whoever makes a destination
able to send pushes its id there, so a drain starts now rather than at the next poll."""

from __future__ import annotations

from app.core.keys import WAKE_KEEP, Keys
from app.core.operations import Commands, Op, Pipeline


def queue_wake(pipe: Pipeline, keys: Keys, *dests: str) -> None:
    """Queue the wake of ``dests`` on ``pipe`` (the list stays ``WAKE_KEEP`` long)."""
    if dests:
        pipe.rpush(keys.wake(), *dests)
        pipe.ltrim(keys.wake(), -WAKE_KEEP, -1)


def wake(keys: Keys, *dests: str) -> Op[None]:
    """The wake of ``dests`` as an operation (one round trip)."""
    yield Commands(lambda pipe: queue_wake(pipe, keys, *dests))
