"""What operators read: per destination the dataflow metrics, backlog, lag, connection and quota.

``destination_status`` builds one destination's document (``app/ops/status_doc.py``), once per
read; the JSON status API, the ``outreach-sync status`` table, the HTML status page, Prometheus
and the alert rules all read it.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis.asyncio as aioredis
from limits import parse as parse_limit

from app.config.destinations import Destination
from app.core.keys import Keys
from app.core.redaction import redact_text
from app.core.settings import Settings
from app.enroll import EnrollStore
from app.ops.mapping_issues import learned_view, notes
from app.ops.status_doc import (
    AudienceRow,
    BulkStatus,
    ConnectionDoc,
    DestinationStatus,
    EnrollmentRow,
    EnrollmentStatus,
    Failure,
    Flow,
    HourFlow,
    Metrics,
    Quota,
    ResolveStatus,
    WindowFlow,
    governing,
)
from app.ratelimit.gate import QuotaGate, gate_for
from app.store import by_email
from app.store.bulk_state import bulk_status
from app.store.counters import (
    HOUR_S,
    Lag,
    Window,
    audience_rows,
    hour_of,
    read_lag,
    read_totals,
    read_window,
    summary,
)
from app.store.prospects import ProspectStore
from app.store.registry import Registry

#: Hours a status document covers unless asked otherwise.
DEFAULT_HOURS = 24
#: Characters of Outreach's detail kept on a failure.
DETAIL_CHARS = 200
_SCAN_BATCH = 500
#: Fields of an hourly metrics hash holding the backlog and lag last seen in that hour (a
#: status read writes them: the charts' backlog and lag per hour, kept as long as the counts).
SAMPLE_PENDING = "sample:pending"
SAMPLE_IN_FLIGHT = "sample:in_flight"
SAMPLE_LAG_S = "sample:lag_s"


class BadQuery(ValueError):
    """A status query parameter that cannot be used; the message names it."""


def parse_hours(raw: str | None, *, keys: Keys) -> int:
    """``?hours=N``: 1 up to the metrics retention (absent: ``DEFAULT_HOURS``; empty is not
    a number, as the OpenAPI document says)."""
    most = keys.metrics_retention_hours
    if raw is None:
        return min(DEFAULT_HOURS, most)
    # Length first: int() of thousands of digits is slow, and past 4,300 a ValueError.
    digits = raw.isascii() and raw.isdigit() and len(raw) <= 9
    if not digits or not 1 <= int(raw) <= most:
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
) -> DestinationStatus | None:
    """One destination's status (None: unknown). ``hours``: the window summed into
    ``metrics.window`` and listed in ``metrics.hourly``; ``failures``: how many of the newest
    failure records to include (reasons and field names, never values). Records the backlog
    and lag it read as the current hour's sample."""
    dest = await registry.destination(dest_id)
    if dest is None:
        found = await registry.broken_destination(dest_id)
        if found is None:
            return None
        return await _broken_status(
            dest_id, found.reason, store=store, hours=hours, failures=failures, now_s=now_s
        )
    now = time.time() if now_s is None else now_s
    client, keys = store.redis, store.keys
    dest, issues = await learned_view(client, keys, dest)
    issue_notes = notes(issues)
    conn = await registry.connection(dest.connection)
    flows = await _flows(store, dest_id, hours=hours, now_s=now)
    connection = await _connection(client, keys, dest.connection, conn is not None)
    quota = None
    if conn is not None:
        connection = connection.model_copy(update={"user": conn.user})
        quota = await read_quota(gate, client, keys, conn.user, conn.rate_limit)
    invalid = flows.invalid_mapping_ids
    return DestinationStatus(
        destination=dest_id,
        name=dest.name,
        enabled=dest.enabled,
        **flows.fields(),
        audiences=[
            AudienceRow(
                **row,
                invalid=row["mapping_id"] in invalid,
                mapping_issue=issue_notes.get(row["mapping_id"]),
            )
            for row in audience_rows(dest, flows.totals, flows.in_window)
        ],
        connection=connection,
        quota=quota,
        recent_failures=(
            await recent_failures(client, keys, dest_id, limit=failures) if failures else None
        ),
        mapping_ids=dest.mapping_ids,
        mapping_issues=issues,
        resolve=await resolve_status(client, keys, dest, flows.totals, now_ms=int(now * 1000)),
        bulk=BulkStatus.model_validate(
            await bulk_status(
                client,
                keys,
                dest_id,
                dest.connection,
                enabled=dest.bulk.enabled,
                now_ms=int(now * 1000),
            )
        ),
        enrollment=await enrollment_status(EnrollStore(client, keys), dest, now_ms=int(now * 1000)),
    )


async def enrollment_status(
    store: EnrollStore, dest: Destination, *, now_ms: int
) -> EnrollmentStatus:
    """Sequence enrollment's figures of ``dest``: per configured (or counted) audience."""
    figures = await store.figures(dest.id)
    rules = dest.sequencing
    rows = []
    for audience in sorted(set(rules.sequences) | set(figures.by_audience)):
        rule = rules.sequences.get(audience)
        rows.append(
            EnrollmentRow(
                audience=audience,
                sequence=None if rule is None else rule.sequence,
                on_exit=None if rule is None else rule.on_exit,
                counts=figures.by_audience.get(audience, {}),
            )
        )
    paused = figures.paused_until_ms > now_ms
    return EnrollmentStatus(
        enabled=rules.enabled,
        dry_run=rules.dry_run,
        waiting=figures.waiting,
        paused_until_ms=figures.paused_until_ms if paused else None,
        paused_reason=figures.paused_reason if paused else None,
        audiences=rows,
    )


#: The resolve section's counts: status field -> the drain's tally (``drain_`` + name).
RESOLVE_COUNTS = {
    "from_cache": "resolve_cache_hits",
    "by_lookup": "resolve_looked_up",
    "lookups": "resolve_lookups",
    "not_found": "resolve_not_found",
    "ambiguous": "resolve_ambiguous",
    "created": "resolve_created",
    "create_requests": "resolve_create_requests",
    "gone": "resolve_gone",
}


async def resolve_status(
    client: aioredis.Redis, keys: Keys, dest: Destination, totals: Mapping[str, int], *, now_ms: int
) -> ResolveStatus:
    """Identity resolution of a destination (profiles known by email, ``app/resolve``)."""
    waiting, resolving = await by_email.waiting(client, keys, dest.id)
    oldest = await by_email.oldest_ms(client, keys, dest.id)
    identity = dest.identity
    return ResolveStatus(
        by_email=identity is not None and identity.by_email,
        on_missing=identity.on_missing if identity else "skip",
        on_ambiguous=identity.on_ambiguous if identity else "skip",
        waiting=waiting,
        resolving=resolving,
        oldest_waiting_s=None if oldest is None else max(0, now_ms - oldest) / 1000,
        **{name: int(totals.get(f"drain_{tally}", 0)) for name, tally in RESOLVE_COUNTS.items()},
    )


async def _broken_status(
    dest_id: str,
    reason: str,
    *,
    store: ProspectStore,
    hours: int,
    failures: int,
    now_s: float | None,
) -> DestinationStatus:
    """The status of a destination whose stored record cannot be read: what Redis holds for
    it (backlog, counts, failures) and why it is broken; nothing of its configuration."""
    now = time.time() if now_s is None else now_s
    client, keys = store.redis, store.keys
    flows = await _flows(store, dest_id, hours=hours, now_s=now)
    return DestinationStatus(
        destination=dest_id,
        name=dest_id,
        enabled=False,
        **flows.fields(),
        audiences=[],
        connection=ConnectionDoc(id="", known=False),
        recent_failures=(
            await recent_failures(client, keys, dest_id, limit=failures) if failures else None
        ),
        broken=reason,
    )


@dataclass(frozen=True, slots=True)
class _Flows:
    """What a status reads of a destination's keys alone: backlog, lag and counts."""

    now_s: float
    hours: int
    pending: int
    in_flight: int
    lag: Lag
    totals: dict[str, int]
    window: Window
    in_window: dict[str, int]
    invalid_mapping_ids: list[int]

    def fields(self) -> dict[str, Any]:
        lag_s = self.lag.seconds(int(self.now_s * 1000))
        oldest = self.lag.oldest_ms
        return {
            "generated_at": iso(self.now_s),
            "pending": self.pending,
            "in_flight": self.in_flight,
            "lag_s": lag_s,
            "oldest_pending_at": iso(None if oldest is None else oldest / 1000),
            "lag_exact": self.lag.exact,
            "counters": self.totals,
            "invalid_mapping_ids": self.invalid_mapping_ids,
            "metrics": Metrics(
                totals=Flow.of(self.totals),
                window=WindowFlow(
                    hours=self.hours,
                    from_=iso(self.window.first_hour * HOUR_S),
                    to=iso(self.now_s),
                    **summary(self.in_window),
                ),
                hourly=[
                    _hour((self.window.first_hour + i) * HOUR_S, c)
                    for i, c in enumerate(self.window.hourly)
                ],
            ),
        }


async def _flows(store: ProspectStore, dest_id: str, *, hours: int, now_s: float) -> _Flows:
    client, keys = store.redis, store.keys
    pending, in_flight = await store.backlog(dest_id)
    lag = await read_lag(client, keys, dest_id)
    await _sample(client, keys, dest_id, now_s, pending, in_flight, lag.seconds(int(now_s * 1000)))
    totals = await read_totals(client, keys, dest_id)
    window = await read_window(client, keys, dest_id, hours=hours, now_s=now_s)
    invalid = sorted(await store.invalid_mappings(dest_id))
    return _Flows(now_s, hours, pending, in_flight, lag, totals, window, window.total(), invalid)


def _hour(start_s: int, counts: Mapping[str, int]) -> HourFlow:
    return HourFlow(
        hour=iso(start_s),
        pending=counts.get(SAMPLE_PENDING),
        in_flight=counts.get(SAMPLE_IN_FLIGHT),
        lag_s=counts.get(SAMPLE_LAG_S),
        **summary(counts),
    )


async def _sample(
    client: aioredis.Redis,
    keys: Keys,
    dest: str,
    now_s: float,
    pending: int,
    in_flight: int,
    lag_s: float | None,
) -> None:
    """The backlog and lag as last seen this hour, beside the hour's counts (same retention);
    one pipelined write per status read."""
    hour = keys.metrics_hour(dest, hour_of(now_s))
    sample = {SAMPLE_PENDING: pending, SAMPLE_IN_FLIGHT: in_flight, SAMPLE_LAG_S: round(lag_s or 0)}
    pipe = client.pipeline(transaction=False)
    pipe.hset(hour, mapping=sample)
    pipe.expire(hour, keys.metrics_ttl_s())
    await pipe.execute()


async def read_quota(
    gate: QuotaGate, client: aioredis.Redis, keys: Keys, user: str, rate_limit: str
) -> Quota:
    """``user``'s quota: our window (the gate's state), Outreach's last report and the limit
    that governs."""
    q = await gate.state(user, limit=rate_limit)
    reported = q.limits.reported
    spent = None
    if reported is not None and q.server_told is not None:
        spent = max(0, reported - q.server_told)
    gov = governing(q.limits)
    return Quota(
        user=user,
        limit=q.limit,
        used=q.used,
        remaining=q.remaining,
        reset_s=q.reset_s,
        paused_until_s=q.paused_until_s,
        server_remaining=q.server_remaining,
        server_reset_s=q.server_reset_s,
        window_s=parse_limit(rate_limit).get_expiry(),
        configured_limit=q.limits.configured,
        reported_limit=reported,
        outreach_spent=spent,
        governing_limit=gov.limit,
        governing=gov.source,
        governing_why=gov.why,
    )


async def _connection(
    client: aioredis.Redis, keys: Keys, conn_id: str, known: bool
) -> ConnectionDoc:
    """The connection's id and state (``active`` / ``reauth_required``, when the stored
    record carries one); read from the raw record, so no token is ever decrypted here."""
    raw = await cast("Any", client.hget(keys.connections(), conn_id))
    try:
        rec = json.loads(raw) if raw is not None else {}
    except ValueError:
        rec = {}
    found: dict[str, str] = {}
    if isinstance(rec, dict):
        found = {k: rec[k] for k in ("state", "reason") if isinstance(rec.get(k), str)}
    return ConnectionDoc(id=conn_id, known=known, **found)


def _values(value: Any) -> list[str]:
    """Every scalar inside a field's value as text (a list's emails, a number), to blank."""
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _values(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _values(v)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def _opt(value: Any, kind: type[str] | type[int]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _public_failure(rec: Mapping[str, Any]) -> Failure:
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
    return Failure(
        id=str(rec.get("id", "")),
        at=iso(int(rec.get("at_ms", 0)) / 1000),
        reason=_opt(rec.get("reason"), str),
        status=_opt(rec.get("status"), int),
        error_id=None if rec.get("error_id") is None else str(rec["error_id"]),
        title=redact_text(str(rec["title"])) if rec.get("title") is not None else None,
        detail=detail[:DETAIL_CHARS],
        fields=sorted(fields),
        mapping_ids=[m for m in rec.get("mapping_ids", []) if isinstance(m, int)],
        attempts=_opt(rec.get("attempts"), int),
    )


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
) -> list[Failure]:
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
) -> list[DestinationStatus]:
    """Every destination's status (or ``only`` that one), on ``client`` or a new one."""
    own = client is None
    if client is None:
        from app.core.redis_client import async_client

        client = async_client(settings)
    try:
        store = ProspectStore(client, settings.keys)
        registry = Registry(client, settings.keys)
        gate = gate_for(client, settings)
        ids = [only] if only else await registry.all_destination_ids()
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
