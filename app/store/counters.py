"""Dataflow metrics: what became of a destination's profiles, as totals and in hourly windows.

Every count is a field of two Redis hashes of the destination: the totals (``Keys.counters``,
kept for good, read by older tools under the same names) and the current hour's
(``Keys.metrics_hour``, kept ``METRICS_RETENTION_HOURS``). A writer adds a whole batch's counts
in one pipelined round trip (``count_op``, run by ``write_sync`` / ``write_async``); the Lua
scripts count what only they see (no-op skips in ``claim.lua``, retries in ``settle.lua``)
into the same two hashes.

Per-audience counts are keyed by mapping ID, ``m<N>:<metric>``: the ``customN`` field is what
Outreach holds, so a count stays with it; the audience id is looked up in the destination's
schedule when the counts are read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from app.config.destinations import STATUSES, Destination
from app.core.keys import Keys
from app.core.operations import Commands, Op, Pipeline, run_async, run_sync
from app.core.scripts import package_scripts
from app.outreach.fields import custom_field

HOUR_S = 3600

# Destination-level names (the totals hash had these before the hourly windows).
PROFILES_RECEIVED = "profiles_received"
PROFILES_ACCEPTED = "profiles_accepted"
PROFILES_EXCLUDED = "profiles_excluded"
PROFILES_REJECTED = "profiles_rejected"
AUDIENCES_IGNORED = "audiences_ignored"
ATTRIBUTES_REJECTED = "attributes_rejected"
ATTRIBUTES_UNMAPPED = "attributes_unmapped"
UNMAPPED_BY = "unmapped:"  # + attribute (an Outreach attribute's name, else "other")
EXCLUDED_BY = "excluded:"  # + reason
PROSPECTS_ACTIVATED = "drain_delivered"
FIELDS_ACTIVATED = "activated:fields"
ATTRIBUTES_ACTIVATED = "activated:attributes"
PROSPECTS_NOOP = "prospects_noop"
FIELDS_NOOP = "fields_noop"
FAILED = "prospects_failed"
FAILED_BY = "failed:"  # + reason
RETRIED = "retried"
RATE_LIMITED = "drain_error_ratelimited"
REQUESTS = "drain_requests"


def hour_of(now_s: float) -> int:
    """The epoch hour ``now_s`` falls in (the suffix of its hourly hash)."""
    return int(now_s // HOUR_S)


def audience_metric(mapping_id: int, *parts: str) -> str:
    """``m7:activated:realized``: a per-audience count of mapping ID 7."""
    return ":".join((f"m{mapping_id}", *parts))


def mapping_id_of(name: str) -> int | None:
    """N of a ``customN`` field, else None."""
    n = name[6:]
    return int(n) if name.startswith("custom") and n.isdigit() else None


# Writing ---------------------------------------------------------------------------------


def queue_counts(
    pipe: Pipeline, keys: Keys, dest: str, counts: Mapping[str, int], now_s: float
) -> bool:
    """Queue ``counts`` onto ``pipe``; False when all were zero (nothing queued)."""
    hour = keys.metrics_hour(dest, hour_of(now_s))
    queued = False
    for name, n in counts.items():
        if n:
            pipe.hincrby(keys.counters(dest), name, n)
            pipe.hincrby(hour, name, n)
            queued = True
    if queued:
        pipe.expire(hour, keys.metrics_ttl_s())
    return queued


def count_op(
    keys: Keys, dest: str, counts: Mapping[str, int], *, now_s: float | None = None
) -> Op[None]:
    """Add ``counts`` to the destination's totals and current hour, in one round trip."""
    now = time.time() if now_s is None else now_s
    yield Commands(lambda pipe: queue_counts(pipe, keys, dest, counts, now))


def write_sync(
    client: redis.Redis,
    keys: Keys,
    dest: str,
    counts: Mapping[str, int],
    *,
    now_s: float | None = None,
) -> None:
    """``count_op`` with a synchronous client."""
    run_sync(client, count_op(keys, dest, counts, now_s=now_s))


async def write_async(
    client: aioredis.Redis, keys: Keys, dest: str, counts: Mapping[str, int]
) -> None:
    """``count_op`` with an asyncio client, now."""
    await run_async(client, count_op(keys, dest, counts))


def status_of(dest: Destination, value: object) -> str:
    """The audience status a written ``customN`` value stands for (``status_values`` read
    backwards); statuses written alike are joined with '+', a value none maps to is 'other'."""
    found = [s for s in STATUSES if dest.status_values.get(s) == value]
    return "+".join(found) or "other"


def count_delivered(counts: Counter[str], dest: Destination, fields: Mapping[str, Any]) -> None:
    """Count fields Outreach took: per audience by status, and attributes."""
    for name, value in fields.items():
        mapping_id = mapping_id_of(name)
        if mapping_id is None:
            counts[ATTRIBUTES_ACTIVATED] += 1
        else:
            counts[audience_metric(mapping_id, "activated", status_of(dest, value))] += 1
    counts[FIELDS_ACTIVATED] += len(fields)


def count_failed(counts: Counter[str], reason: str, fields: Iterable[str]) -> None:
    """Count one failure record and, per audience, its ``customN`` fields."""
    counts[FAILED] += 1
    counts[FAILED_BY + reason] += 1
    for mapping_id in filter(None, map(mapping_id_of, fields)):
        counts[audience_metric(mapping_id, "failed", reason)] += 1


# Reading ---------------------------------------------------------------------------------


def _by_prefix(flat: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in sorted(flat.items()) if k.startswith(prefix) and v}


def summary(flat: Mapping[str, int]) -> dict[str, Any]:
    """A destination's counts by meaning (the same shape for totals and windows)."""
    get = flat.get
    return {
        "profiles_received": get(PROFILES_RECEIVED, 0),
        "profiles_accepted": get(PROFILES_ACCEPTED, 0),
        "profiles_excluded": get(PROFILES_EXCLUDED, 0),
        "excluded_by_reason": _by_prefix(flat, EXCLUDED_BY),
        "profiles_rejected": get(PROFILES_REJECTED, 0),
        "audiences_ignored": get(AUDIENCES_IGNORED, 0),
        "attributes_rejected": get(ATTRIBUTES_REJECTED, 0),
        "attributes_unmapped": get(ATTRIBUTES_UNMAPPED, 0),
        "unmapped_by_attribute": _by_prefix(flat, UNMAPPED_BY),
        "prospects_activated": get(PROSPECTS_ACTIVATED, 0),
        "fields_activated": get(FIELDS_ACTIVATED, 0),
        "attributes_activated": get(ATTRIBUTES_ACTIVATED, 0),
        "prospects_skipped_noop": get(PROSPECTS_NOOP, 0),
        "fields_skipped_noop": get(FIELDS_NOOP, 0),
        "failed": get(FAILED, 0),
        "failed_by_reason": _by_prefix(flat, FAILED_BY),
        "retried": get(RETRIED, 0),
        "rate_limited": get(RATE_LIMITED, 0),
        "requests": get(REQUESTS, 0),
    }


@dataclass
class AudienceCounts:
    """One mapping ID's counts; ``received``/``activated`` by status, the rest by reason."""

    received: Counter[str] = field(default_factory=Counter)
    activated: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    skipped_noop: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": sum(self.received.values()),
            "received_by_status": dict(sorted(self.received.items())),
            "activated": sum(self.activated.values()),
            "activated_by_status": dict(sorted(self.activated.items())),
            "excluded": sum(self.excluded.values()),
            "excluded_by_reason": dict(sorted(self.excluded.items())),
            "rejected": self.rejected,
            "skipped_noop": self.skipped_noop,
            "failed": sum(self.failed.values()),
            "failed_by_reason": dict(sorted(self.failed.items())),
        }


def audience_counts(flat: Mapping[str, int]) -> dict[int, AudienceCounts]:
    """The per-audience fields of a metrics hash, by mapping ID."""
    out: dict[int, AudienceCounts] = {}
    for name, n in flat.items():
        head, _, rest = name.partition(":")
        if not (head.startswith("m") and head[1:].isdigit() and rest and n):
            continue
        counts = out.setdefault(int(head[1:]), AudienceCounts())
        kind, _, key = rest.partition(":")
        if kind in ("received", "activated", "excluded", "failed") and key:
            getattr(counts, kind)[key] += n
        elif kind == "rejected":
            counts.rejected += n
        elif kind == "noop":
            counts.skipped_noop += n
    return out


def audience_rows(
    dest: Destination, totals: Mapping[str, int], window: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """One row per mapping ID in the schedule or in the counts, by mapping ID."""
    named = {n: a for a, n in dest.audiences.items()}
    total_counts, window_counts = audience_counts(totals), audience_counts(window or {})
    rows = []
    for mapping_id in sorted(set(named) | set(total_counts)):
        row: dict[str, Any] = {
            "audience": named.get(mapping_id),
            "mapping_id": mapping_id,
            "field": custom_field(mapping_id),
            "totals": total_counts.get(mapping_id, AudienceCounts()).as_dict(),
        }
        if window is not None:
            row["window"] = window_counts.get(mapping_id, AudienceCounts()).as_dict()
        rows.append(row)
    return rows


def _ints(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class Window:
    """The last ``hours`` hourly hashes (the current hour included), oldest first."""

    hours: int
    first_hour: int
    hourly: list[dict[str, int]]

    def total(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for counts in self.hourly:
            out.update(counts)
        return dict(out)


async def read_totals(client: aioredis.Redis, keys: Keys, dest: str) -> dict[str, int]:
    raw = await cast("Any", client.hgetall(keys.counters(dest)))
    return _ints(raw)


async def read_window(
    client: aioredis.Redis, keys: Keys, dest: str, *, hours: int, now_s: float | None = None
) -> Window:
    """The last ``hours`` hours of counts, in one round trip."""
    last = hour_of(time.time() if now_s is None else now_s)
    first = last - hours + 1
    pipe = client.pipeline(transaction=False)
    for hour in range(first, last + 1):
        pipe.hgetall(keys.metrics_hour(dest, hour))
    return Window(hours, first, [_ints(raw) for raw in await pipe.execute()])


#: Prospects whose first-seen times are all read for the lag; beyond this, a sample of as many.
LAG_EXACT_UP_TO = 20_000


@dataclass(frozen=True, slots=True)
class Lag:
    """Age of the oldest change not yet delivered (pending or in flight)."""

    oldest_ms: int | None
    exact: bool
    prospects: int

    def seconds(self, now_ms: int) -> float | None:
        return None if self.oldest_ms is None else max(0, now_ms - self.oldest_ms) / 1000


async def read_lag(client: aioredis.Redis, keys: Keys, dest: str) -> Lag:
    script = package_scripts("app.store").aio(client, "oldest")
    res = await script(keys=[keys.first_seen(dest)], args=[LAG_EXACT_UP_TO])
    oldest = int(res[0])
    return Lag(None if oldest < 0 else oldest, bool(int(res[1])), int(res[2]))


def drain_metrics(tally: Mapping[str, int]) -> dict[str, int]:
    """A drain's tally as metric names: its own stats get the ``drain_`` prefix of the totals
    hash (``requests`` -> ``drain_requests``); names with a ':' are metric names already."""
    return {(k if ":" in k else f"drain_{k}"): n for k, n in tally.items() if n}
