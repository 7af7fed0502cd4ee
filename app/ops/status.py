"""What operators read: per destination the dataflow metrics, backlog, lag, connection and quota.

``destination_status`` builds one destination's document; the JSON status API, the
``outreach-sync status`` table, the HTML status page and Prometheus all read it.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis.asyncio as aioredis

from app.core.keys import Keys
from app.core.redaction import redact_text
from app.core.settings import Settings
from app.ratelimit.gate import QuotaGate, gate_for
from app.store import counters as metrics
from app.store.prospects import ProspectStore
from app.store.registry import Registry

#: Hours a status document covers unless asked otherwise.
DEFAULT_HOURS = 24
#: Characters of Outreach's detail kept on a failure.
DETAIL_CHARS = 200
_SCAN_BATCH = 500


class BadQuery(ValueError):
    """A status query parameter that cannot be used; the message names it."""


def parse_hours(raw: str | None, *, keys: Keys) -> int:
    """``?hours=N``: 1 up to the metrics retention (default ``DEFAULT_HOURS``)."""
    most = keys.metrics_retention_hours
    if raw is None or raw == "":
        return min(DEFAULT_HOURS, most)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise BadQuery(f"hours must be a whole number from 1 to {most} (got {raw[:20]!r})")
    return int(raw)


def iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def destination_status(
    dest_id: str,
    *,
    store: ProspectStore,
    registry: Registry,
    gate: QuotaGate,
    hours: int = DEFAULT_HOURS,
    failures: int = 0,
    now_s: float | None = None,
) -> dict[str, Any] | None:
    """One destination's status (None: unknown). ``hours``: the window summed into
    ``metrics.window`` and listed in ``metrics.hourly``; ``failures``: how many of the newest
    failure records to include (reasons and field names, never values)."""
    dest = await registry.destination(dest_id)
    if dest is None:
        return None
    now = time.time() if now_s is None else now_s
    client, keys = store.redis, store.keys
    conn = await registry.connection(dest.connection)
    pending, in_flight = await store.backlog(dest_id)
    totals = await metrics.read_totals(client, keys, dest_id)
    window = await metrics.read_window(client, keys, dest_id, hours=hours, now_s=now)
    lag = await metrics.read_lag(client, keys, dest_id)
    in_window = window.total()
    doc: dict[str, Any] = {
        "destination": dest_id,
        "name": dest.name,
        "enabled": dest.enabled,
        "generated_at": iso(now),
        "pending": pending,
        "in_flight": in_flight,
        "lag_s": lag.seconds(int(now * 1000)),
        "oldest_pending_at": iso(None if lag.oldest_ms is None else lag.oldest_ms / 1000),
        "lag_exact": lag.exact,
        # The flat totals hash, under the names tools have always read.
        "counters": totals,
        "invalid_mapping_ids": sorted(await store.invalid_mappings(dest_id)),
        "metrics": {
            "totals": metrics.summary(totals),
            "window": {
                "hours": hours,
                "from": iso(window.first_hour * metrics.HOUR_S),
                "to": iso(now),
                **metrics.summary(in_window),
            },
            "hourly": [
                {"hour": iso((window.first_hour + i) * metrics.HOUR_S), **metrics.summary(c)}
                for i, c in enumerate(window.hourly)
            ],
        },
        "audiences": metrics.audience_rows(dest, totals, in_window),
        "connection": await _connection(client, keys, dest.connection, conn is not None),
    }
    invalid = set(doc["invalid_mapping_ids"])
    for row in doc["audiences"]:
        row["invalid"] = row["mapping_id"] in invalid
    if conn is not None:
        q = await gate.state(conn.user, limit=conn.rate_limit)
        doc["connection"]["user"] = conn.user
        doc["quota"] = {"user": conn.user, **dataclasses.asdict(q)}
    if failures:
        doc["recent_failures"] = await recent_failures(client, keys, dest_id, limit=failures)
    return doc


async def _connection(
    client: aioredis.Redis, keys: Keys, conn_id: str, known: bool
) -> dict[str, Any]:
    """The connection's id and state (``active`` / ``reauth_required``, when the stored
    record carries one); read from the raw record, so no token is ever decrypted here."""
    out: dict[str, Any] = {"id": conn_id, "known": known, "state": None, "reason": None}
    raw = await cast("Any", client.hget(keys.connections(), conn_id))
    try:
        rec = json.loads(raw) if raw is not None else {}
    except ValueError:
        rec = {}
    if isinstance(rec, dict):
        for name in ("state", "reason"):
            if isinstance(rec.get(name), str):
                out[name] = rec[name]
    return out


def _values(value: Any) -> list[str]:
    """Every scalar inside a field's value as text (a list's emails, a number), to blank."""
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _values(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _values(v)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def _public_failure(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A failure record as the status shows it: reasons and field names, never values."""
    raw_fields = rec.get("fields")
    fields: dict[str, Any] = raw_fields if isinstance(raw_fields, dict) else {}
    detail = str(rec.get("detail") or "")
    # Outreach may quote what it refused: a value of the record never leaves through it,
    # longest first (so a value containing another is blanked whole).
    # A value shorter than 3 characters (a digit, "US") only as a whole word, so the text
    # around it ("custom12") survives.
    texts = {t for v in fields.values() for t in _values(v) if t.strip()}
    for text in sorted(texts, key=len, reverse=True):
        if len(text) >= 3:
            detail = detail.replace(text, "…")
        else:
            detail = re.sub(rf"(?<!\w){re.escape(text)}(?!\w)", "…", detail)
    # And what it quotes of values not in the record (e-mails, ``name: value``...).
    detail = redact_text(detail)
    return {
        "id": str(rec.get("id", "")),
        "at": iso(int(rec.get("at_ms", 0)) / 1000),
        "reason": rec.get("reason"),
        "status": rec.get("status"),
        "error_id": rec.get("error_id"),
        "title": redact_text(str(rec["title"])) if rec.get("title") is not None else None,
        "detail": detail[:DETAIL_CHARS],
        "fields": sorted(fields),
        "mapping_ids": [m for m in rec.get("mapping_ids", []) if isinstance(m, int)],
        "attempts": rec.get("attempts"),
    }


def _decoded(fid: bytes | str, raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    rec["id"] = fid.decode() if isinstance(fid, bytes) else str(fid)
    return rec


async def recent_failures(
    client: aioredis.Redis, keys: Keys, dest: str, *, limit: int
) -> list[dict[str, Any]]:
    """The newest ``limit`` failure records, from the capped recent-failures index (ids
    replayed or purged since are skipped). Without an index (records written before it
    existed) the failures hash is scanned (HSCAN: a large dead-letter hash never blocks)."""
    ids = await cast("Any", client.zrevrange(keys.failures_recent(dest), 0, -1))
    if ids:
        raws = await cast("Any", client.hmget(keys.failures(dest), ids))
        found = [_decoded(fid, raw) for fid, raw in zip(ids, raws, strict=True)]
        live = [rec for rec in found if rec is not None][:limit]
        return [_public_failure(rec) for rec in live]
    newest: list[tuple[int, str, dict[str, Any]]] = []
    async for fid, raw in client.hscan_iter(keys.failures(dest), count=_SCAN_BATCH):
        rec = _decoded(fid, raw)
        if rec is None:
            continue
        item = (int(rec.get("at_ms") or 0), rec["id"], rec)
        if len(newest) < limit:
            heapq.heappush(newest, item)
        else:
            heapq.heappushpop(newest, item)
    return [_public_failure(rec) for _, _, rec in sorted(newest, key=lambda t: t[:2], reverse=True)]


async def collect_status(
    settings: Settings,
    only: str | None = None,
    *,
    hours: int = DEFAULT_HOURS,
    client: aioredis.Redis | None = None,
    failures: int = 0,
) -> list[dict[str, Any]]:
    """Every destination's status (or ``only`` that one), on ``client`` or a new one."""
    own = client is None
    if client is None:
        from app.core.redis_client import async_client

        client = async_client(settings)
    try:
        store = ProspectStore(client, settings.keys)
        registry = Registry(client, settings.keys)
        gate = gate_for(client, settings)
        ids = [only] if only else await registry.destination_ids()
        docs = [
            await destination_status(
                d, store=store, registry=registry, gate=gate, hours=hours, failures=failures
            )
            for d in ids
        ]
        return [d for d in docs if d is not None]
    finally:
        if own:
            await client.aclose()


async def render_status(
    settings: Settings, only: str | None, *, as_json: bool, hours: int = DEFAULT_HOURS
) -> str:
    from app.ops.status_table import render_table

    rows = await collect_status(settings, only, hours=hours)
    return json.dumps(rows, indent=2, default=str) if as_json else render_table(rows)
