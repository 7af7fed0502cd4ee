"""Outreach's rate-limit signals: headers and messages turned into epoch seconds and budgets.

Pure functions, no I/O: the header names and formats are unconfirmed (see the API notes),
so every plausible form is accepted and anything unparsable is treated as absent.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

#: A reset below this cannot be an epoch (it would be before 2001): servers that send a
#: delta in seconds instead of an epoch are read as "seconds from now".
DELTA_RESET_BELOW = 1_000_000_000
#: A reset above this is an epoch in milliseconds (seconds would be after the year 33658).
MS_RESET_ABOVE = 1_000_000_000_000

ResetForm = Literal["delta s", "epoch s", "epoch ms", "ISO 8601", "HTTP date"]

_ISO_START = re.compile(r"\d{4}-\d{2}-\d{2}[T ]")
_TRY_AGAIN_AT = re.compile(
    r"try again at\s+"
    r"(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ServerBudget:
    """What the server last said about the user's quota; any part may be missing."""

    limit: int | None
    remaining: int | None
    reset_s: float | None


def parse_reset(
    status: int,
    headers: Mapping[str, str],
    body: str | None,
    *,
    now_s: float,
    fallback_pause_s: float,
) -> float | None:
    """Epoch second when sending may resume after a 429; None for any other status.

    Sources in order: ``X-RateLimit-Reset`` (see `reset_form`), ``Retry-After``
    (seconds or an HTTP date), the body's "please try again at <ISO time>", else
    ``now_s + fallback_pause_s``. Never earlier than ``now_s``.
    """
    if status != 429:
        return None
    lower = _lower(headers)
    resume = _reset_epoch(lower.get("x-ratelimit-reset"), now_s)
    if resume is None:
        resume = retry_after_at(lower.get("retry-after"), now_s)
    if resume is None and body:
        resume = parse_try_again_at(body)
    if resume is None:
        resume = now_s + fallback_pause_s
    return max(resume, now_s)


def parse_try_again_at(body: str) -> float | None:
    """Epoch seconds of "please try again at <ISO time>" in a 429 or 503 body (UTC if no zone)."""
    match = _TRY_AGAIN_AT.search(body)
    if match is None:
        return None
    try:
        moment = datetime.fromisoformat(match.group("ts"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_budget(headers: Mapping[str, str], *, now_s: float | None = None) -> ServerBudget | None:
    """``X-RateLimit-Limit``/``-Remaining``/``-Reset`` as a budget; None when none is usable.

    The reset is normalised to epoch seconds like in `parse_reset` (a small value is a delta
    from ``now_s``, which defaults to the current time).
    """
    lower = _lower(headers)
    now = time.time() if now_s is None else now_s
    budget = ServerBudget(
        limit=_count(lower.get("x-ratelimit-limit")),
        remaining=_count(lower.get("x-ratelimit-remaining")),
        reset_s=_reset_epoch(lower.get("x-ratelimit-reset"), now),
    )
    if budget == ServerBudget(None, None, None):
        return None
    return budget


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _count(raw: str | None) -> int | None:
    value = _number(raw)
    return None if value is None else int(value)


def reset_form(raw: str | None) -> ResetForm | None:
    """How a reset header writes its time (None: absent or unreadable): a number is a delta
    in seconds when small, else an epoch in seconds or, when huge, milliseconds; text is an
    ISO 8601 time (UTC if no zone) or an HTTP date."""
    if raw is None:
        return None
    value = _number(raw)
    if value is not None:
        if value < DELTA_RESET_BELOW:
            return "delta s"
        return "epoch ms" if value > MS_RESET_ABOVE else "epoch s"
    if _iso_epoch(raw) is not None:
        return "ISO 8601"
    return "HTTP date" if _http_date_epoch(raw) is not None else None


def _reset_epoch(raw: str | None, now_s: float) -> float | None:
    form = reset_form(raw)
    if raw is None or form is None:
        return None
    if form == "ISO 8601":
        return _iso_epoch(raw)
    if form == "HTTP date":
        return _http_date_epoch(raw)
    value = float(raw.strip())
    if form == "delta s":
        return now_s + value
    return value / 1000.0 if form == "epoch ms" else value


def _iso_epoch(raw: str) -> float | None:
    text = raw.strip()
    if not _ISO_START.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _http_date_epoch(raw: str) -> float | None:
    try:
        moment = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def retry_after_at(raw: str | None, now_s: float) -> float | None:
    """The epoch a ``Retry-After`` header names (delay seconds or an HTTP date)."""
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return now_s + seconds
    return _http_date_epoch(raw)
