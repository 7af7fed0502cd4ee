"""Stored prospects, the request log and the counters derived from it."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from app.sandbox.directory import Directory

LOG_CAPACITY = 200_000
DROPPED = 0


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the sandbox saw it; status 0 means the connection was dropped."""

    time: float
    method: str
    path: str
    user: str | None
    status: int
    prospect_id: int | None
    attributes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON data."""
        return {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "user": self.user,
            "status": self.status,
            "prospect_id": self.prospect_id,
            "attributes": list(self.attributes),
        }


class SandboxState:
    """Everything the sandbox remembers between requests, except tokens and quotas."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget prospects, log and counters."""
        self.prospects: dict[int, dict[str, Any]] = {}
        self.directory = Directory()
        #: Prospect id -> its owner's user id (the ``owner`` relationship), when seeded.
        self.owners: dict[int, str] = {}
        self.log: deque[RequestRecord] = deque(maxlen=LOG_CAPACITY)
        self.by_status: Counter[int] = Counter()
        self.by_user: Counter[str] = Counter()
        self.patch_count_by_prospect: Counter[int] = Counter()
        self.token_calls: Counter[str] = Counter()
        self.requests = 0
        self.patches_ok = 0
        self.rate_limited = 0

    def record(self, entry: RequestRecord) -> None:
        """Log one API request and update the counters."""
        self.log.append(entry)
        self.requests += 1
        self.by_status[entry.status] += 1
        if entry.user is not None:
            self.by_user[entry.user] += 1
        if entry.status == 429:
            self.rate_limited += 1
        if entry.method == "PATCH" and entry.status == 200 and entry.prospect_id is not None:
            self.patches_ok += 1
            self.patch_count_by_prospect[entry.prospect_id] += 1

    def merge(
        self,
        prospect_id: int,
        attributes: dict[str, Any],
        *,
        now: float,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """Merge written attributes into a prospect and return all of its attributes."""
        stored = self.prospects.setdefault(prospect_id, {})
        stored.update(attributes)
        self.directory.written(prospect_id, attributes, now=now, created_at=created_at)
        return stored

    def create(self, attributes: dict[str, Any], *, now: float) -> int:
        """Store a new prospect under the next free id and return the id."""
        prospect_id = self.directory.next_id
        self.merge(prospect_id, attributes, now=now)
        return prospect_id

    def requests_since(self, since: float) -> list[RequestRecord]:
        """Log entries strictly after `since` (epoch seconds)."""
        return [entry for entry in self.log if entry.time > since]
