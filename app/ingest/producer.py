"""In-process producers: ``Producer().send("demo", profiles)`` validates and records them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError

from app.core.errors import StoreUnavailable, UnknownDestination
from app.core.redis_client import sync_client
from app.core.settings import Settings, get_settings
from app.ingest.batch import ingest_sync
from app.ingest.report import Batch
from app.store.registry import destination_sync

__all__ = ["Producer", "UnknownDestination", "send_patiently", "transient_cause"]

T = TypeVar("T")

#: Redis failures worth waiting out: a restart or a Sentinel failover (connection refused or
#: lost, no master elected yet, a demoted master refusing writes, a dataset still loading).
#: A Redis Cluster's failover shows as the cluster down, or a slot not (yet) served.
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)
#: First wait after a transient failure; it doubles up to ``MAX_WAIT_S``.
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 5.0


class Producer:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis = sync_client(self.settings)

    def send(self, destination_id: str, profiles: Iterable[Any], *, start: int = 0) -> Batch:
        """Validate ``profiles`` and merge their changes; bad ones are reported, not raised."""
        dest = destination_sync(self.redis, self.settings.keys, destination_id)
        if dest is None:
            raise UnknownDestination(destination_id)
        return ingest_sync(
            self.redis,
            self.settings.keys,
            dest,
            profiles,
            window_ms=self.settings.coalesce_window_ms,
            start=start,
        )

    def close(self) -> None:
        self.redis.close()


def transient_cause(exc: BaseException) -> BaseException | None:
    """The Redis failure behind ``exc`` when waiting may cure it, else None."""
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
    return cause if isinstance(cause, TRANSIENT) else None


def send_patiently(
    send: Callable[[], T],
    *,
    retry_for_s: float,
    on_wait: Callable[[BaseException, float], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``send()``, called again while Redis fails transiently, for at most ``retry_for_s``
    from the first failure (``on_wait(cause, seconds left)`` before each wait); then the
    last failure is raised. Any other error is raised at once.

    Sending a batch again is harmless: changes merge by version (``lua/merge.lua``), so a
    change stored by the failed attempt is stored again with the same value (at the same
    version when the profile carries its time, else at its new arrival time); only the
    dataflow counts may count such a batch twice."""
    deadline: float | None = None
    wait_s = FIRST_WAIT_S
    while True:
        try:
            return send()
        except (redis.RedisError, StoreUnavailable) as exc:
            cause, now = transient_cause(exc), clock()
            deadline = now + retry_for_s if deadline is None else deadline
            if cause is None or now >= deadline:
                raise
            on_wait(cause, deadline - now)
            sleep(min(wait_s, deadline - now))
            wait_s = min(2 * wait_s, MAX_WAIT_S)
