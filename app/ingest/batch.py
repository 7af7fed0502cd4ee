"""Producers' one way in: validate profiles, coalesce their changes, merge them into Redis.

The HTTP API, the Python function, the Celery task and the CLI all run ``evaluate_batch`` and
then ``store_op`` (``ingest_sync`` / ``ingest_async``), so every producer gets the same rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from app.config.destinations import Destination
from app.core.keys import Keys
from app.core.operations import Op, run_async, run_sync
from app.ingest import mapping_ids
from app.ingest.profiles import ProfileResult, evaluate_profile
from app.ingest.report import Batch, IngestReport, count_audiences
from app.store.counters import count_op
from app.store.prospects import Change, ProspectStore, effective_window_ms, encode, merge_op

_K = TypeVar("_K", int, str)


def evaluate_batch(
    profiles: Iterable[Any], destination: Destination, *, received_ms: int, start: int = 0
) -> Batch:
    """Validate profiles and coalesce their changes per prospect and field (newest wins)."""
    report = IngestReport()
    results: list[ProfileResult] = []
    latest: dict[int, dict[str, tuple[int, str]]] = {}
    by_email: dict[str, dict[str, tuple[int, str]]] = {}
    for i, raw in enumerate(profiles, start):
        if isinstance(raw, InvalidJSON):
            res = ProfileResult(i, "rejected", raw.reason, (), (), 0)
        else:
            res = evaluate_profile(raw, destination, index=i, received_ms=received_ms)
        results.append(res)
        report.count(res)
        count_audiences(report.audiences, res)
        if res.outcome != "accepted":
            report.problems.append(res)
            if res.outcome == "excluded":
                report.excluded += 1
                report.excluded_reasons[res.reason or "excluded"] += 1
            else:
                report.rejected += 1
            continue
        report.accepted += 1
        for pid in res.prospect_ids:
            _coalesce(latest.setdefault(pid, {}), res)
        for email in res.emails:
            _coalesce(by_email.setdefault(email, {}), res)
    return Batch(report, results, _flat(latest), _flat(by_email))


def _coalesce(fields: dict[str, tuple[int, str]], res: ProfileResult) -> None:
    for ch in res.changes:
        seen = fields.get(ch.field)
        if seen is None or ch.ts_ms >= seen[0]:
            fields[ch.field] = (ch.ts_ms, encode(ch.value))


def _flat(latest: dict[_K, dict[str, tuple[int, str]]]) -> dict[_K, list[Change]]:
    return {
        k: [(f, value, ts) for f, (ts, value) in fields.items()] for k, fields in latest.items()
    }


def store_op(
    keys: Keys,
    destination: Destination,
    batch: Batch,
    resolution: mapping_ids.Resolution | None = None,
    *,
    now_ms: int,
    window_ms: int,
) -> Op[Batch]:
    """Merge an evaluated batch's changes, then count it; fills in its report (with the
    memberships ``resolution`` left out, for mapping IDs from the data)."""
    if resolution is not None:
        mapping_ids.apply(resolution, batch)
    window = effective_window_ms(destination, window_ms)
    merge = yield from merge_op(
        keys, destination.id, batch.changes, now_ms=now_ms, window_ms=window
    )
    if batch.email_changes:
        # Known by email only: kept, coalesced and versioned under the email until resolved.
        merge += yield from merge_op(
            keys.for_emails(), destination.id, batch.email_changes, now_ms=now_ms, window_ms=window
        )
    batch.report.fields_applied = merge.applied
    batch.report.fields_stale = merge.stale
    yield from count_op(keys, destination.id, batch.report.counters())
    return batch


def learn_op(
    keys: Keys, destination: Destination, profiles: Iterable[Any], *, now_ms: int
) -> Op[mapping_ids.Resolution | None]:
    """For a destination taking its mapping IDs from the data, learn them from the batch
    (``app/ingest/mapping_ids.py``); nothing (and no round trip) for the others."""
    if destination.mapping_ids != "data":
        return None
    return (yield from mapping_ids.learn_batch_op(keys, destination, list(profiles), now_ms=now_ms))


def ingest_sync(
    client: redis.Redis,
    keys: Keys,
    destination: Destination,
    profiles: Iterable[Any],
    *,
    window_ms: int,
    start: int = 0,
) -> Batch:
    """Ingest from a synchronous producer; returns the batch with its report filled in.
    ``window_ms``: the deployment's window (a destination's own wins)."""
    now = int(time.time() * 1000)
    resolution = run_sync(client, learn_op(keys, destination, profiles, now_ms=now))
    if resolution is not None:
        destination, profiles = resolution.destination, resolution.profiles
    batch = evaluate_batch(profiles, destination, received_ms=now, start=start)
    op = store_op(keys, destination, batch, resolution, now_ms=now, window_ms=window_ms)
    return run_sync(client, op)


#: A request with more profiles than this is validated on a thread, so the API's event loop
#: keeps answering (health checks, other producers) while a 16 MB body is checked.
THREAD_ABOVE_PROFILES = 2000


async def ingest_async(
    store: ProspectStore, destination: Destination, profiles: list[Any], *, window_ms: int
) -> Batch:
    """``ingest_sync`` for the HTTP API."""
    now = int(time.time() * 1000)
    resolution = await run_async(
        store.redis, learn_op(store.keys, destination, profiles, now_ms=now)
    )
    if resolution is not None:
        destination, profiles = resolution.destination, resolution.profiles
    if len(profiles) > THREAD_ABOVE_PROFILES:
        batch = await asyncio.to_thread(evaluate_batch, profiles, destination, received_ms=now)
    else:
        batch = evaluate_batch(profiles, destination, received_ms=now)
    op = store_op(store.keys, destination, batch, resolution, now_ms=now, window_ms=window_ms)
    return await run_async(store.redis, op)


#: Media types whose body is one JSON document, and those whose body is one JSON value per line.
DOCUMENT_TYPES = ("application/json",)
LINES_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson")


class MalformedDocument(ValueError):
    """A body declared (or shaped as) one JSON document does not parse: nothing of it is used."""

    def __init__(self, msg: str, *, line: int, column: int) -> None:
        super().__init__(f"not valid JSON at line {line} column {column}: {msg}")
        self.line, self.column = line, column
        #: A whole document followed by more: NDJSON declared as one JSON document, likely.
        self.extra = msg == "Extra data"


def read_profiles(source: str | Iterable[str], *, media_type: str | None = None) -> Iterator[Any]:
    """Profiles from JSON or NDJSON text (or its lines): one profile, ``{"profiles": [...]}``,
    a list, or one profile per line.

    ``media_type`` decides which (``DOCUMENT_TYPES`` or ``LINES_TYPES``); without one the
    shape does: a single line, or a first line that is not a JSON value by itself, is one
    document. A document that does not parse raises ``MalformedDocument`` (never re-read as
    lines: its lines are not profiles). In NDJSON a line that is not JSON yields an
    ``InvalidJSON`` marker that validation rejects on its own, so it never takes its
    neighbours down."""
    text = source if isinstance(source, str) else "".join(source)
    text = text.removeprefix("\ufeff")  # a byte order mark some editors and tools write
    if not text.strip():
        return
    lines = media_type in LINES_TYPES if media_type is not None else _looks_like_lines(text)
    if not lines:
        yield from _documents(_one_document(text))
        return
    # Lines end at "\n" (and "\r\n") only: str.splitlines() would also cut at U+2028,
    # U+2029 and U+0085, which JSON strings may hold unescaped.
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield from _documents(json.loads(line), ndjson=True)
            except json.JSONDecodeError as exc:
                yield InvalidJSON(f"line {n}: not JSON ({exc.msg})")
            except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                yield InvalidJSON(f"line {n}: not usable JSON ({exc})")
            except RecursionError:
                yield InvalidJSON(f"line {n}: not usable JSON (nested too deeply)")


def _one_document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedDocument(exc.msg, line=exc.lineno, column=exc.colno) from None
    except ValueError as exc:
        raise MalformedDocument(str(exc), line=1, column=1) from None
    except RecursionError:
        raise MalformedDocument("nested too deeply", line=1, column=1) from None


def _looks_like_lines(text: str) -> bool:
    body = text.strip()
    if "\n" not in body:
        return False
    first = body.split("\n", 1)[0]
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return False
    return True


def _documents(doc: Any, *, ndjson: bool = False) -> Iterator[Any]:
    if isinstance(doc, dict) and "profiles" in doc and not ndjson:
        profiles = doc["profiles"]
        yield from profiles if isinstance(profiles, list) else [profiles]
    elif isinstance(doc, list) and not ndjson:
        yield from doc
    else:
        yield doc


@dataclass(frozen=True)
class InvalidJSON:
    """A line that could not be parsed: rejected with this reason by validation."""

    reason: str
