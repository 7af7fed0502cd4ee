"""Producers' one way in: validate profiles, coalesce their changes, merge them into Redis.

The HTTP API, the Python function, the Celery task and the CLI all call ``evaluate_batch``
and then one of the two merge adapters, so every producer gets the same rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from app.config.destinations import STATUSES, Destination
from app.core.keys import Keys
from app.ingest import mapping_ids
from app.ingest.profiles import ProfileResult, evaluate_profile, parse_time
from app.store import counters as metrics
from app.store.counters import audience_metric, write_sync
from app.store.prospects import Change, MergeResult, ProspectStore, encode, merge_sync


@dataclass
class IngestReport:
    accepted: int = 0
    excluded: int = 0
    rejected: int = 0
    ignored_audiences: int = 0
    fields_applied: int = 0
    fields_stale: int = 0
    excluded_reasons: Counter[str] = field(default_factory=Counter)
    problems: list[ProfileResult] = field(default_factory=list)
    #: Per-audience counts by metric name (``m7:received:realized``, app/store/counters.py).
    audiences: Counter[str] = field(default_factory=Counter)
    #: Profile index -> [(audience, reason)] left out of it (mapping IDs from the data).
    audience_problems: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def received(self) -> int:
        return self.accepted + self.excluded + self.rejected

    def add(self, other: IngestReport) -> None:
        for name in ("accepted", "excluded", "rejected", "ignored_audiences"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.fields_applied += other.fields_applied
        self.fields_stale += other.fields_stale
        self.excluded_reasons.update(other.excluded_reasons)
        self.problems.extend(other.problems)
        self.audiences.update(other.audiences)
        self.audience_problems.update(other.audience_problems)

    def as_dict(self, *, results: list[ProfileResult] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "received": self.received,
            "accepted": self.accepted,
            "excluded": self.excluded,
            "rejected": self.rejected,
            "ignored_audiences": self.ignored_audiences,
            "fields_applied": self.fields_applied,
            "fields_stale": self.fields_stale,
        }
        if results is not None:
            doc["profiles"] = [
                {
                    "index": r.index,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "prospects": list(r.prospect_ids),
                }
                for r in results
            ]
            for entry in doc["profiles"]:
                if left_out := self.audience_problems.get(entry["index"]):
                    entry["audiences_rejected"] = [
                        {"audience": a, "reason": reason} for a, reason in left_out
                    ]
        return doc

    def counters(self) -> dict[str, int]:
        out = {
            metrics.PROFILES_RECEIVED: self.received,
            metrics.PROFILES_ACCEPTED: self.accepted,
            metrics.PROFILES_EXCLUDED: self.excluded,
            metrics.PROFILES_REJECTED: self.rejected,
            metrics.AUDIENCES_IGNORED: self.ignored_audiences,
        }
        for reason, n in self.excluded_reasons.items():
            key = metrics.EXCLUDED_BY + _reason_key(reason)
            out[key] = out.get(key, 0) + n
        out.update(self.audiences)
        return out


def _reason_key(reason: str) -> str:
    # "OutreachId 'abc' is not a positive integer" -> one counter, not one per bad value.
    return "no_identity" if reason.startswith("no ") else "bad_identity"


def _time_or(value: object, default: int) -> int:
    try:
        return default if value is None else parse_time(value)
    except ValueError:
        return default


def _count_audiences(
    counts: Counter[str], raw: object, dest: Destination, res: ProfileResult, received_ms: int
) -> None:
    """Per mapped audience a profile names: received by status, and excluded or rejected.
    Read from the raw profile, defensively, so excluded and rejected profiles count too. An
    audience named under several namespaces makes one change, so it counts once: with the
    status of its newest evaluation, as ``app/ingest/profiles.py`` picks it."""
    segments = raw.get("segmentMembership") if isinstance(raw, dict) else None
    if not isinstance(segments, dict):
        return
    event_ms = _time_or(raw.get("timestamp") if isinstance(raw, dict) else None, received_ms)
    newest: dict[int, tuple[int, str]] = {}
    for audiences in segments.values():
        if not isinstance(audiences, dict):
            continue
        for audience, membership in audiences.items():
            mapping_id = dest.audiences.get(audience) if isinstance(audience, str) else None
            status = membership.get("status") if isinstance(membership, dict) else None
            if mapping_id is None or not isinstance(status, str) or status not in STATUSES:
                continue
            ts = _time_or(membership.get("lastQualificationTime"), event_ms)
            seen = newest.get(mapping_id)
            if seen is None or seen[0] <= ts:
                newest[mapping_id] = (ts, status)
    for mapping_id, (_, status) in newest.items():
        counts[audience_metric(mapping_id, "received", status)] += 1
        if res.outcome == "excluded":
            counts[audience_metric(mapping_id, "excluded", _reason_key(res.reason or ""))] += 1
        elif res.outcome == "rejected":
            counts[audience_metric(mapping_id, "rejected")] += 1


@dataclass
class Batch:
    report: IngestReport
    results: list[ProfileResult]
    changes: dict[int, list[Change]]


def evaluate_batch(
    profiles: Iterable[Any], destination: Destination, *, received_ms: int, start: int = 0
) -> Batch:
    """Validate profiles and coalesce their changes per prospect and field (newest wins)."""
    report = IngestReport()
    results: list[ProfileResult] = []
    latest: dict[int, dict[str, tuple[int, str]]] = {}
    for i, raw in enumerate(profiles, start):
        if isinstance(raw, InvalidJSON):
            res = ProfileResult(i, "rejected", raw.reason, (), (), 0)
        else:
            res = evaluate_profile(raw, destination, index=i, received_ms=received_ms)
        results.append(res)
        report.ignored_audiences += res.ignored_audiences
        if destination.audiences:
            _count_audiences(report.audiences, raw, destination, res, received_ms)
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
            fields = latest.setdefault(pid, {})
            for ch in res.changes:
                seen = fields.get(ch.field)
                if seen is None or ch.ts_ms >= seen[0]:
                    fields[ch.field] = (ch.ts_ms, encode(ch.value))
    changes = {
        pid: [(f, value, ts) for f, (ts, value) in fields.items()] for pid, fields in latest.items()
    }
    return Batch(report, results, changes)


def _merged(batch: Batch, merge: MergeResult) -> IngestReport:
    batch.report.fields_applied = merge.applied
    batch.report.fields_stale = merge.stale
    return batch.report


def ingest_sync(
    client: redis.Redis,
    keys: Keys,
    destination: Destination,
    profiles: Iterable[Any],
    *,
    window_ms: int,
    start: int = 0,
) -> Batch:
    """Ingest from a synchronous producer; returns the batch with its report filled in."""
    now = int(time.time() * 1000)
    resolution = None
    if destination.mapping_ids == "data":
        resolution = mapping_ids.learn_sync_batch(
            client, keys, destination, list(profiles), now_ms=now
        )
        destination, profiles = resolution.destination, resolution.profiles
    batch = evaluate_batch(profiles, destination, received_ms=now, start=start)
    if resolution is not None:
        mapping_ids.apply(resolution, batch)
    window = (
        destination.coalesce_window_ms if destination.coalesce_window_ms is not None else window_ms
    )
    merge = merge_sync(client, keys, destination.id, batch.changes, now_ms=now, window_ms=window)
    _merged(batch, merge)
    _count_sync(client, keys, destination.id, batch.report)
    return batch


#: A request with more profiles than this is validated on a thread, so the API's event loop
#: keeps answering (health checks, other producers) while a 16 MB body is checked.
THREAD_ABOVE_PROFILES = 2000


async def ingest_async(
    store: ProspectStore, destination: Destination, profiles: list[Any], *, window_ms: int
) -> Batch:
    now = int(time.time() * 1000)
    resolution = None
    if destination.mapping_ids == "data":
        resolution = await mapping_ids.learn_async_batch(
            store.redis, store.keys, destination, profiles, now_ms=now
        )
        destination, profiles = resolution.destination, resolution.profiles
    if len(profiles) > THREAD_ABOVE_PROFILES:
        batch = await asyncio.to_thread(evaluate_batch, profiles, destination, received_ms=now)
    else:
        batch = evaluate_batch(profiles, destination, received_ms=now)
    if resolution is not None:
        mapping_ids.apply(resolution, batch)
    window = (
        destination.coalesce_window_ms if destination.coalesce_window_ms is not None else window_ms
    )
    merge = await store.merge(destination.id, batch.changes, now_ms=now, window_ms=window)
    _merged(batch, merge)
    await store.count(destination.id, **batch.report.counters())
    return batch


def _count_sync(client: redis.Redis, keys: Keys, dest: str, report: IngestReport) -> None:
    write_sync(client, keys, dest, report.counters())


def read_profiles(source: str | Iterable[str]) -> Iterator[Any]:
    """Profiles from JSON or NDJSON text (or its lines): one profile, ``{"profiles": [...]}``,
    a list, or one profile per line. A line that is not JSON yields an ``InvalidJSON`` marker
    that validation rejects on its own, so it never takes its neighbours down."""
    text = source if isinstance(source, str) else "".join(source)
    text = text.removeprefix("\ufeff")  # a byte order mark some editors and tools write
    if not text.strip():
        return
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        yield from _documents(doc)
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
