"""Dead letters: the changes Outreach would not take, for operators to read, replay or purge.

Records are written by ``Deliverer._fail`` into ``Keys.failures(dest)`` (id -> JSON).
A replay goes through the ordinary merge with each field's recorded version, so a change
that arrived since the failure wins and the failed value is not sent over it.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis

from app.core.keys import Keys
from app.store.prospects import Change, encode, merge_sync

_P = TypeVar("_P", int, str)
#: Records merged and deleted per round trip while replaying or purging by filter.
BATCH = 500
#: Characters of Outreach's detail shown in the table.
DETAIL_WIDTH = 48


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: int = 0
    fields_applied: int = 0
    fields_stale: int = 0
    #: Ids asked for that no record has (already replayed or purged, or mistyped).
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Filter:
    reason: str | None = None
    mapping_id: int | None = None

    def __call__(self, rec: dict[str, Any]) -> bool:
        if self.reason is not None and rec.get("reason") != self.reason:
            return False
        return self.mapping_id is None or self.mapping_id in rec.get("mapping_ids", ())


def _decode(dest: str, fid: bytes | str, raw: bytes) -> dict[str, Any]:
    fid = fid.decode() if isinstance(fid, bytes) else fid
    try:
        rec = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"failure record {dest}/{fid} is not valid JSON: {exc}") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("fields"), dict):
        raise ValueError(f"failure record {dest}/{fid} is not an object with 'fields'")
    # The hash field is the id: records written before ids were stored still work.
    rec["id"] = fid
    rec.setdefault(
        "mapping_ids",
        [int(f[6:]) for f in rec["fields"] if f.startswith("custom") and f[6:].isdigit()],
    )
    return cast("dict[str, Any]", rec)


def _scan(client: redis.Redis, keys: Keys, dest: str, keep: _Filter) -> Iterator[dict[str, Any]]:
    # HSCAN, not HGETALL: a large dead-letter hash must not block Redis in one command.
    for fid, raw in client.hscan_iter(keys.failures(dest), count=BATCH):
        rec = _decode(dest, fid, raw)
        if keep(rec):
            yield rec


def list_failures(
    client: redis.Redis,
    keys: Keys,
    *,
    destination: str | None = None,
    reason: str | None = None,
    mapping_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Failure records, newest first; ``destination=None`` looks at every destination."""
    if destination is None:
        dests = sorted(d.decode() for d in cast("list[bytes]", client.hkeys(keys.destinations())))
    else:
        dests = [destination]
    keep = _Filter(reason, mapping_id)
    found = (rec for d in dests for rec in _scan(client, keys, d, keep))
    return heapq.nlargest(limit, found, key=lambda r: (int(r["at_ms"]), str(r["id"])))


def show_failure(
    client: redis.Redis, keys: Keys, destination: str, failure_id: str
) -> dict[str, Any] | None:
    """One failure record, or None when there is none with that id."""
    raw = cast("bytes | None", client.hget(keys.failures(destination), failure_id))
    return None if raw is None else _decode(destination, failure_id, raw)


def _select(
    client: redis.Redis, keys: Keys, dest: str, ids: Sequence[str] | None, keep: _Filter
) -> tuple[Iterator[list[dict[str, Any]]], tuple[str, ...]]:
    """The matching records in batches, and the asked-for ids that have no record."""
    if ids is None:
        found: Iterable[dict[str, Any]] = _scan(client, keys, dest, keep)
        missing: tuple[str, ...] = ()
    else:
        uniq = list(dict.fromkeys(ids))
        raws = cast("list[bytes | None]", client.hmget(keys.failures(dest), uniq)) if uniq else []
        pairs = list(zip(uniq, raws, strict=True))
        missing = tuple(fid for fid, raw in pairs if raw is None)
        recs = (_decode(dest, fid, raw) for fid, raw in pairs if raw is not None)
        found = [rec for rec in recs if keep(rec)]
    it = iter(found)

    def batches() -> Iterator[list[dict[str, Any]]]:
        while batch := [rec for _, rec in zip(range(BATCH), it, strict=False)]:
            yield batch

    return batches(), missing


def _changes(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], _P]
) -> tuple[dict[_P, list[Change]], int]:
    """Per prospect (or email) the newest recorded value of each field, and how many were
    superseded."""
    best: dict[_P, dict[str, tuple[int, int, Any]]] = {}
    superseded = 0
    for rec in records:
        versions = rec.get("versions") or {}
        fields = best.setdefault(key(rec), {})
        for name, value in rec["fields"].items():
            # Without a recorded version the value counts as oldest: it never overwrites a
            # value whose version is known, and is applied only where none is.
            cand = (int(versions.get(name, 0)), int(rec["at_ms"]), value)
            cur = fields.get(name)
            superseded += cur is not None
            if cur is None or cand[:2] >= cur[:2]:
                fields[name] = cand
    changes = {
        p: [(name, encode(v), ver) for name, (ver, _, v) in fields.items()]
        for p, fields in best.items()
    }
    return changes, superseded


def replay(
    client: redis.Redis,
    keys: Keys,
    *,
    destination: str,
    failure_ids: Sequence[str] | None = None,
    reason: str | None = None,
    mapping_id: int | None = None,
    window_ms: int,
    now_ms: int | None = None,
    requeue: Callable[[dict[str, Any]], bool] | None = None,
) -> ReplayResult:
    """Merge the selected records' fields back as pending changes, then delete the records.

    ``failure_ids=None`` selects every record matching the filters. The delivered values are
    left alone: a failed value was never delivered, so no-op skipping lets it through unless
    Outreach already holds that very value, in which case sending it again would be waste.
    A record of a refused enrollment (``enrollment``) goes to ``requeue`` (app.enroll's
    ``requeue_sync``), which makes it pending again.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    batches, missing = _select(client, keys, destination, failure_ids, _Filter(reason, mapping_id))
    replayed = applied = stale = 0
    for batch in batches:
        by_id = [r for r in batch if r.get("email") is None]
        changes, superseded = _changes(by_id, lambda r: int(r["prospect"]))
        for rec in batch:
            if requeue is not None and isinstance(rec.get("enrollment"), dict):
                applied += requeue(rec)
        res = merge_sync(client, keys, destination, changes, now_ms=now, window_ms=window_ms)
        # Changes of a profile known by email go back under the email: resolved again, so
        # a prospect made since (or a rule changed since) is found, not the cached miss.
        by_email = [r for r in batch if r.get("email") is not None]
        if by_email:
            mail, more = _changes(by_email, lambda r: str(r["email"]))
            client.delete(*(keys.email_cache(destination, e) for e in mail))
            res += merge_sync(
                client, keys.for_emails(), destination, mail, now_ms=now, window_ms=window_ms
            )
            superseded += more
        # Deleted only after the merge: a crash in between replays again, never loses.
        _delete(client, keys, destination, [str(r["id"]) for r in batch])
        replayed += len(batch)
        applied += res.applied
        stale += res.stale + superseded
    return ReplayResult(replayed, applied, stale, missing)


def purge(
    client: redis.Redis,
    keys: Keys,
    *,
    destination: str,
    failure_ids: Sequence[str] | None = None,
    reason: str | None = None,
    mapping_id: int | None = None,
) -> int:
    """Delete the selected records (``failure_ids=None``: all matching); returns how many."""
    batches, _ = _select(client, keys, destination, failure_ids, _Filter(reason, mapping_id))
    return sum(_delete(client, keys, destination, [str(r["id"]) for r in b]) for b in batches)


def _delete(client: redis.Redis, keys: Keys, destination: str, ids: list[str]) -> int:
    """Delete failure records and their entries in the recent-failures index together, so
    the status page does not list (and skip) records that are gone. Returns how many were."""
    if not ids:
        return 0
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.failures(destination), *ids)
    pipe.zrem(keys.failures_recent(destination), *ids)
    deleted, _ = pipe.execute()
    return cast("int", deleted)


def _age(ms: int) -> str:
    s = max(0, ms) // 1000
    for unit, size, upto in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if s < upto:
            return f"{s // size}{unit}"
    return f"{s // 86400}d"


def render_table(records: list[dict[str, Any]], *, now_ms: int) -> str:
    """The records as an aligned text table for operators."""
    head = ("ID", "DESTINATION", "PROSPECT", "REASON", "STATUS", "MAPPING IDS", "DETAIL", "AGE")
    head_keys = ("id", "destination", "prospect", "reason")
    rows: list[tuple[str, ...]] = [head]
    for r in records:
        detail = " ".join(str(r.get("detail") or "").split())
        if len(detail) > DETAIL_WIDTH:
            detail = detail[: DETAIL_WIDTH - 1] + "…"
        mids = ",".join(str(m) for m in r.get("mapping_ids", ())) or "-"
        status = "-" if r.get("status") is None else str(r["status"])
        age = _age(now_ms - int(r["at_ms"]))
        rows.append((*(str(r.get(k, "-")) for k in head_keys), status, mids, detail, age))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
