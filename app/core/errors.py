"""A shallow tree of errors that carry what is needed to act on them."""

from __future__ import annotations

from dataclasses import dataclass, field


class OutreachSyncError(Exception):
    """Base of the service's own errors."""


class StoreUnavailable(OutreachSyncError):
    """Redis could not be reached or refused a command."""


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
