"""Outreach's timestamp format."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(epoch_s: float | None) -> str | None:
    """ISO 8601 in UTC with microseconds and a Z, as Outreach writes its timestamps."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch_s(text: str) -> float:
    """The epoch seconds of an ISO 8601 time (a trailing Z or no zone means UTC)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
