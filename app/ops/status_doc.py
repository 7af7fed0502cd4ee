"""The status document's shape: what a status read gives the page, the CLI, Prometheus, the
alert rules and the JSON routes (built by ``app/ops/status.py``).

Typed so that every reader gets checked attributes, not a ``dict[str, Any]`` to re-check;
:meth:`DestinationStatus.as_json` is the JSON the status routes have always answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.ratelimit.governing import QuotaLimits
from app.store.counters import summary


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
    attributes_rejected: int = 0
    attributes_unmapped: int = 0
    unmapped_by_attribute: dict[str, int] = Field(default_factory=dict)
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
        return cls(**summary(flat))


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
    #: Mapping IDs from the data: the latest change or conflict of this mapping ID, in words.
    mapping_issue: str | None = None


class ConnectionDoc(_Doc):
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


class MappingIssue(_Doc):
    """The latest change or conflict of one audience's mapping ID learned from the data
    (``app/store/lua/audience_learn.lua`` writes it)."""

    kind: Literal["changed", "conflict"]
    audience: str
    #: ``changed``: the mapping ID it moved to; ``conflict``: the one it asked for.
    mapping_id: int
    #: ``changed``: the mapping ID it had.
    previous: int | None = None
    #: ``conflict``: the audience holding the mapping ID, and the one the asker holds, if any.
    held_by: str | None = None
    current: int | None = None
    #: How often in a row it happened, and when last (epoch ms).
    count: int = 1
    at_ms: int


class BulkOffDoc(_Doc):
    """Why bulk delivery is off (for the destination or its whole connection), until when."""

    scope: Literal["destination", "connection"]
    reason: str
    until_ms: int


class BulkStatus(_Doc):
    """Bulk delivery: on or off, and what it costs (``cost_per_record``: quota spent on bulk
    per prospect it delivered; PATCH costs 1)."""

    enabled: bool = False
    off: BulkOffDoc | None = None
    calls: int = 0
    records: int = 0
    delivered: int = 0
    requests: int = 0
    charged: int = 0
    cost_per_record: float | None = None


class EnrollmentRow(_Doc):
    """One audience's sequence enrollment: its sequence and counts by outcome (enrolled,
    already, finished, paused, left, cancelled, reentry_skipped, refused:<reason>,
    paused:<reason>, failed, unknown, would_<action> in a dry run...)."""

    audience: str
    sequence: int | None
    on_exit: str | None
    counts: dict[str, int] = Field(default_factory=dict)


class EnrollmentStatus(_Doc):
    """Sequence enrollment of a destination: per audience, how many wait, any pause."""

    enabled: bool = False
    dry_run: bool = False
    waiting: int = 0
    paused_until_ms: int | None = None
    paused_reason: str | None = None
    audiences: list[EnrollmentRow] = Field(default_factory=list)


class ResolveStatus(_Doc):
    """Identity resolution (profiles known by email): its rules, what waits, what it cost."""

    by_email: bool = False
    on_missing: str = "skip"
    on_ambiguous: str = "skip"
    #: Emails whose changes wait for their prospect(s), of which being resolved now.
    waiting: int = 0
    resolving: int = 0
    #: Age of the oldest change waiting for resolution.
    oldest_waiting_s: float | None = None
    from_cache: int = 0
    by_lookup: int = 0
    #: Lookup requests spent (each one permit of the quota).
    lookups: int = 0
    not_found: int = 0
    ambiguous: int = 0
    created: int = 0
    create_requests: int = 0
    #: Prospects a PATCH found gone (404): their email resolved again.
    gone: int = 0


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
    connection: ConnectionDoc
    quota: Quota | None = None
    recent_failures: list[Failure] | None = None
    #: Where mapping IDs come from (``config`` or ``data``), and the learned ones' issues.
    mapping_ids: Literal["config", "data"] = "config"
    mapping_issues: list[MappingIssue] = Field(default_factory=list)
    bulk: BulkStatus = Field(default_factory=BulkStatus)
    enrollment: EnrollmentStatus = Field(default_factory=EnrollmentStatus)
    resolve: ResolveStatus = Field(default_factory=ResolveStatus)
    #: Why its stored record cannot be read (None: it can). A broken destination shows what
    #: Redis holds for it (backlog, counts) and nothing of its configuration.
    broken: str | None = None

    def as_json(self, *, counters: bool = True) -> dict[str, Any]:
        """The document as the JSON status API has always answered it: sections that do not
        apply (``quota`` without a connection record, ``recent_failures`` not asked for, a
        connection's ``user`` without its record) are left out rather than null."""
        out = self.model_dump(mode="json", by_alias=True)
        for name in ("quota", "recent_failures", "broken"):
            if out[name] is None:
                del out[name]
        if out["connection"]["user"] is None:
            del out["connection"]["user"]
        for row in out["audiences"]:
            if row["window"] is None:
                del row["window"]
            if row["mapping_issue"] is None:
                del row["mapping_issue"]
        if not counters:
            del out["counters"]
        return out


def governing(limits: QuotaLimits) -> Governing:
    """The gate's decision of which limit caps a user's spending (``ratelimit.governing``),
    with the reason an operator reads."""
    if limits.reported is None:
        why = "Outreach has not reported a limit: the configured rate_limit governs"
    elif limits.source == "configured":
        why = "the configured rate_limit caps spending even though Outreach allows more"
    elif limits.reported < limits.configured:
        why = "Outreach reports a lower limit than the configured rate_limit: Outreach's governs"
    else:
        why = "Outreach reports the configured limit: spending follows Outreach's count"
    return Governing(limit=limits.governing, source=limits.source, why=why)


def duration(seconds: float | None) -> str:
    """A span of seconds as people read it (``4.2s``, ``3m05s``, ``2h10m``); ``-`` for none."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
