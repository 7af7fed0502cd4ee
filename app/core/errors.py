"""A shallow tree of errors that carry what is needed to act on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from limits.errors import StorageError
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError


class OutreachSyncError(Exception):
    """Base of the service's own errors."""


class StoreUnavailable(OutreachSyncError):
    """Redis could not be reached, did not answer in time, or cannot take writes for now (a
    failover, a restart): the same request may succeed shortly (HTTP 503, ``Retry-After``)."""


class StoreFault(OutreachSyncError):
    """Redis answered with an error (a script's, a wrong command's): a bug or data that should
    have been refused earlier, not an outage. Sending the same again cannot succeed, so it is
    reported as a bug (HTTP 500, Sentry), never as "unavailable"."""


#: Redis failures that waiting may cure. ``ConnectionError`` covers a refused or lost
#: connection, a dataset still loading and no Sentinel master yet; ``TimeoutError`` a hung
#: peer; ``ReadOnlyError`` a demoted master.
UNREACHABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    OSError,
    # A Redis Cluster failing over: the cluster down, a slot moving or not served yet.
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)
#: Error replies (no exception class of their own) that also pass with time: out of memory,
#: a master without replicas, a script running too long, a cluster resharding.
_PASSING_REPLIES = ("OOM ", "MASTERDOWN ", "NOREPLICAS ", "BUSY ", "TRYAGAIN ", "CLUSTERDOWN ")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (a Redis failure, or ``limits``' wrapping of one) may pass with time."""
    if isinstance(exc, StorageError):
        exc = exc.storage_error
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, UNREACHABLE):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_PASSING_REPLIES)


def store_error(exc: BaseException) -> StoreUnavailable | StoreFault:
    """The service's error for a Redis failure: the one classification of Redis errors, so
    no caller reports a script error as an outage (``raise store_error(exc) from exc``)."""
    if unreachable(exc):
        return StoreUnavailable(str(exc))
    return StoreFault(f"{type(exc).__name__}: {exc}")


class UnknownDestination(OutreachSyncError, LookupError):
    """No such destination (never configured, or deleted while the changes were on their way:
    the merge refuses them atomically, so nothing is stored that no dispatcher would drain)."""

    def __init__(self, destination_id: str) -> None:
        super().__init__(f"unknown destination {destination_id!r}")
        self.destination_id = destination_id


@dataclass
class DeliveryError(OutreachSyncError):
    """Outreach did not take a PATCH; subclasses say what to do about it."""

    status: int | None
    detail: str

    def __str__(self) -> str:
        return f"{type(self).__name__}(status={self.status}): {self.detail}"


@dataclass
class RateLimited(DeliveryError):
    """429: nobody sends for this user before ``reset_s`` (epoch seconds)."""

    reset_s: float = 0.0


@dataclass
class Retryable(DeliveryError):
    """Transient (5xx, maintenance, timeout, dropped connection): try again later."""

    after_s: float | None = None


@dataclass
class Unauthorized(DeliveryError):
    """401: the access token expired or was revoked."""


@dataclass
class Permanent(DeliveryError):
    """400/403/404/415/422: sending the same thing again cannot succeed."""

    error_id: str | None = None
    title: str | None = None
    pointers: tuple[str, ...] = field(default_factory=tuple)


class UnreadableRecord(OutreachSyncError, ValueError):
    """A stored record (a destination, a connection, a producer key) that cannot be read:
    garbage, or a document this version's model refuses. It harms only itself: readers of
    many records skip it and report it as broken with ``reason`` (which never quotes it)."""

    def __init__(self, kind: str, record_id: str, reason: str) -> None:
        super().__init__(f"{kind} {record_id!r}: stored record unreadable: {reason}")
        self.kind = kind
        self.record_id = record_id
        self.reason = reason
