"""Stored records that cannot be read: why, in words, and a warning logged once.

A reader of many records (the catalog, the status, the alert rules, a worker's poll) turns a
record it cannot parse into a :class:`Broken` entry and goes on with the rest, as a broker
dead-letters one poisoned message and keeps consuming (STYLE.md, principle 18).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from app.config.destinations import describe_error, format_loc
from app.core.errors import UnreadableRecord

log = logging.getLogger(__name__)

Kind = Literal["destination", "connection", "producer_key"]
#: Problems of one record named in its reason; the rest are counted.
_PROBLEMS_NAMED = 3

_warned: set[tuple[str, str, str]] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Broken:
    """A stored record that cannot be read, and why (never quoting the record)."""

    kind: Kind
    id: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "reason": self.reason}


def why_unreadable(exc: Exception) -> str:
    """What is wrong with a stored record, from the error reading it raised; never its text."""
    if isinstance(exc, ValidationError):
        problems = [describe_error(e) for e in exc.errors(include_input=False)]
        named = [f"{format_loc(loc)}: {msg}" if loc else msg for loc, msg in problems]
        more = len(named) - _PROBLEMS_NAMED
        tail = f" (and {more} more)" if more > 0 else ""
        return "; ".join(named[:_PROBLEMS_NAMED]) + tail
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    if isinstance(exc, KeyError):
        return f"{exc.args[0]}: is required"
    if isinstance(exc, UnreadableRecord):
        return exc.reason
    return "not a record of the expected shape"


def broken(kind: Kind, record_id: str, exc: Exception) -> Broken:
    """The broken record ``record_id`` (reading it raised ``exc``), warned about once."""
    found = Broken(kind, record_id, why_unreadable(exc))
    warn_once(found)
    return found


def warn_once(found: Broken) -> None:
    """One warning per process for each broken record and reason: readers poll every few
    seconds, and the log must not drown in the same line."""
    key = (found.kind, found.id, found.reason)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "%s %s: stored record unreadable (%s); skipped. Replace or delete it "
        "(docs/operations.md, 'Broken records')",
        found.kind,
        found.id,
        found.reason,
        extra={"record_kind": found.kind, "record_id": found.id},
    )
