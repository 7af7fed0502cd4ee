"""What operators read: per destination the dataflow metrics, backlog, lag, connection and quota.

``destination_status`` builds one destination's :class:`DestinationStatus`, a typed document
that the JSON status API (:meth:`DestinationStatus.as_json`), the ``outreach-sync status``
table, the HTML status page, Prometheus and the alert rules all read.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from limits import parse as parse_limit
from pydantic import BaseModel, ConfigDict, Field

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
#: Fields of an hourly metrics hash holding the backlog and lag last seen in that hour (a
#: status read writes them: the charts' backlog and lag per hour, kept as long as the counts).
SAMPLE_PENDING = "sample:pending"
SAMPLE_IN_FLIGHT = "sample:in_flight"
SAMPLE_LAG_S = "sample:lag_s"


class BadQuery(ValueError):
    """A status query parameter that cannot be used; the message names it."""


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Flow(_Doc):
    """A destination's counts by meaning (the same shape for totals, windows and hours)."""

    profiles_received: int = 0
    profiles_accepted: int = 0
    profiles_excluded: int = 0
    excluded_by_reason: dict[str, int] = Field(default_factory=dict)
    profiles_rejected: int = 0
    audiences_ignored: int = 0
    prospects_activated: int = 0
    fields_activated: int = 0
    attributes_activated: int = 0
    prospects_skipped_noop: int = 0
    fields_skipped_noop: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = Field(default_factory=dict)
    retried: int = 0
    rate_limited: int = 0
    requests: int = 0

    @classmethod
    def of(cls, flat: Mapping[str, int]) -> Flow:
        return cls(**metrics.summary(flat))


class WindowFlow(Flow):
    """The last ``hours`` hours summed (``from``: the first hour's start, ``to``: now)."""

    hours: int
    from_: str | None = Field(alias="from")
    to: str | None


class HourFlow(Flow):
    """One hour's counts and the backlog and lag last seen in it (None: not sampled)."""

    hour: str | None
    pending: int | None = None
    in_flight: int | None = None
    lag_s: int | None = None


class Metrics(_Doc):
    totals: Flow
    window: WindowFlow
    hourly: list[HourFlow]


class AudienceFigures(_Doc):
    """One audience's counts: ``received``/``activated`` by status, the rest by reason."""

    received: int = 0
    received_by_status: dict[str, int] = Field(default_factory=dict)
    activated: int = 0
    activated_by_status: dict[str, int] = Field(default_factory=dict)
    excluded: int = 0
    excluded_by_reason: dict[str, int] = Field(default_factory=dict)
    rejected: int = 0
    skipped_noop: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = Field(default_factory=dict)


class AudienceRow(_Doc):
    """An audience by mapping ID (``audience`` None: no longer in the schedule)."""

    audience: str | None
    mapping_id: int
    field: str
    totals: AudienceFigures
    window: AudienceFigures | None = None
    #: Outreach refused the mapping ID (until the destination is published again).
    invalid: bool = False


class ConnectionState(_Doc):
    """The connection's id and state as stored; ``user`` when its record exists."""

    id: str
    known: bool
    state: str | None = None
    reason: str | None = None
    user: str | None = None


Source = Literal["configured", "reported"]


class Governing(_Doc):
    """The limit that caps a user's spending, where it comes from and why."""

    limit: int
    source: Source
    why: str


class Quota(_Doc):
    """An Outreach user's budget, with each figure's owner in its name.

    Ours: ``limit`` (the connection's configured ``rate_limit``, also ``configured_limit``),
    ``used`` and ``remaining`` (what our own moving window counted: it limits only while the
    configured limit governs). Outreach's (None until it reports): ``reported_limit``,
    ``outreach_spent`` (spent in the current window as Outreach counts it, every integration
    of the user included), ``server_remaining`` (its lowest report of the window less our
    requests in flight), ``server_reset_s``. ``governing_limit``, ``governing`` and
    ``governing_why``: which limit caps spending and why. Times are epoch seconds.
    """

    user: str
    limit: int
    used: int
    remaining: int
    reset_s: float
    paused_until_s: float | None
    server_remaining: int | None
    server_reset_s: float | None
    window_s: int
    configured_limit: int
    reported_limit: int | None
    outreach_spent: int | None
    governing_limit: int
    governing: Source
    governing_why: str


class Failure(_Doc):
    """A failure record as the status shows it: reasons and field names, never values."""

    id: str
    at: str | None
    reason: str | None
    status: int | None
    error_id: str | None
    title: str | None
    detail: str
    fields: list[str]
    mapping_ids: list[int]
    attempts: int | None


class DestinationStatus(_Doc):
    """One destination's status document."""

    destination: str
    name: str
    enabled: bool
    generated_at: str | None
    pending: int
    in_flight: int
    lag_s: float | None
    oldest_pending_at: str | None
    lag_exact: bool
    #: The flat totals hash, under the names tools have always read.
    counters: dict[str, int]
    invalid_mapping_ids: list[int]
    metrics: Metrics
    audiences: list[AudienceRow]
    connection: ConnectionState
    quota: Quota | None = None
    recent_failures: list[Failure] | None = None

    def as_json(self, *, counters: bool = True) -> dict[str, Any]:
        """The document as the JSON status API has always answered it: sections that do not
        apply (``quota`` without a connection record, ``recent_failures`` not asked for, a
        connection's ``user`` without its record) are left out rather than null."""
        out = self.model_dump(mode="json", by_alias=True)
        for name in ("quota", "recent_failures"):
            if out[name] is None:
                del out[name]
        if out["connection"]["user"] is None:
            del out["connection"]["user"]
        for row in out["audiences"]:
            if row["window"] is None:
                del row["window"]
        if not counters:
            del out["counters"]
        return out


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


def governing_limit(configured: int, reported: int | None) -> Governing:
    """Which limit caps a user's spending per window. The configured ``rate_limit`` always
    caps it, even when Outreach reports more; Outreach's reported limit governs when lower.

    The one place this is decided for display: when the gate exposes its own decision, read
    it here instead."""
    if reported is None:
        why = "Outreach has not reported a limit: the configured rate_limit governs"
        return Governing(limit=configured, source="configured", why=why)
    if reported <= configured:
        why = (
            "Outreach reports a lower limit than the configured rate_limit: Outreach's governs"
            if reported < configured
            else "Outreach reports the configured limit: spending follows Outreach's count"
        )
        return Governing(limit=reported, source="reported", why=why)
    why = "the configured rate_limit caps spending even though Outreach allows more"
    return Governing(limit=configured, source="configured", why=why)


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
        return None
    now = time.time() if now_s is None else now_s
    client, keys = store.redis, store.keys
    conn = await registry.connection(dest.connection)
    pending, in_flight = await store.backlog(dest_id)
    lag = await metrics.read_lag(client, keys, dest_id)
    lag_s = lag.seconds(int(now * 1000))
    await _sample(client, keys, dest_id, now, pending, in_flight, lag_s)
    totals = await metrics.read_totals(client, keys, dest_id)
    window = await metrics.read_window(client, keys, dest_id, hours=hours, now_s=now)
    in_window = window.total()
    invalid = sorted(await store.invalid_mappings(dest_id))
    connection = await _connection(client, keys, dest.connection, conn is not None)
    quota = None
    if conn is not None:
        connection = connection.model_copy(update={"user": conn.user})
        quota = await read_quota(gate, client, keys, conn.user, conn.rate_limit)
    return DestinationStatus(
        destination=dest_id,
        name=dest.name,
        enabled=dest.enabled,
        generated_at=iso(now),
        pending=pending,
        in_flight=in_flight,
        lag_s=lag_s,
        oldest_pending_at=iso(None if lag.oldest_ms is None else lag.oldest_ms / 1000),
        lag_exact=lag.exact,
        counters=totals,
        invalid_mapping_ids=invalid,
        metrics=Metrics(
            totals=Flow.of(totals),
            window=WindowFlow(
                hours=hours,
                from_=iso(window.first_hour * metrics.HOUR_S),
                to=iso(now),
                **metrics.summary(in_window),
            ),
            hourly=[
                _hour((window.first_hour + i) * metrics.HOUR_S, c)
                for i, c in enumerate(window.hourly)
            ],
        ),
        audiences=[
            AudienceRow(**row, invalid=row["mapping_id"] in invalid)
            for row in metrics.audience_rows(dest, totals, in_window)
        ],
        connection=connection,
        quota=quota,
        recent_failures=(
            await recent_failures(client, keys, dest_id, limit=failures) if failures else None
        ),
    )


def _hour(start_s: int, counts: Mapping[str, int]) -> HourFlow:
    return HourFlow(
        hour=iso(start_s),
        pending=counts.get(SAMPLE_PENDING),
        in_flight=counts.get(SAMPLE_IN_FLIGHT),
        lag_s=counts.get(SAMPLE_LAG_S),
        **metrics.summary(counts),
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
    hour = keys.metrics_hour(dest, metrics.hour_of(now_s))
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
    item = parse_limit(rate_limit)
    # The gate's record of Outreach's last report (written by quota_observe.lua).
    raw = await cast("Any", client.hmget(f"{keys.quota(user)}:server", ["limit", "remaining"]))
    reported, told = _whole(raw[0]), _whole(raw[1])
    spent = None
    if reported is not None and told is not None and q.server_reset_s is not None:
        spent = max(0, reported - told)
    gov = governing_limit(item.amount, reported)
    return Quota(
        user=user,
        limit=q.limit,
        used=q.used,
        remaining=q.remaining,
        reset_s=q.reset_s,
        paused_until_s=q.paused_until_s,
        server_remaining=q.server_remaining,
        server_reset_s=q.server_reset_s,
        window_s=item.get_expiry(),
        configured_limit=item.amount,
        reported_limit=reported,
        outreach_spent=spent,
        governing_limit=gov.limit,
        governing=gov.source,
        governing_why=gov.why,
    )


def _whole(raw: bytes | str | None) -> int | None:
    try:
        return None if raw is None else int(float(raw))
    except ValueError:
        return None


async def _connection(
    client: aioredis.Redis, keys: Keys, conn_id: str, known: bool
) -> ConnectionState:
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
    return ConnectionState(id=conn_id, known=known, **found)


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
