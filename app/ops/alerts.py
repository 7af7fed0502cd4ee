"""Alert rules: what is wrong with a destination right now, as pure functions of a snapshot.

The runner (``app/ops/alert_runner.py``) builds a :class:`Snapshot` per destination from its
status document (:func:`snapshot_from_status`), adds the last hour's counter deltas
(:class:`LastHour`) and asks :func:`conditions` what holds. Each :class:`Condition` has a stable
``key``: one incident per key, alerted once, recovered once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.config.broken import Broken
from app.core.settings import Settings
from app.ops import mapping_issues
from app.ops.status_doc import BulkOffDoc, DestinationStatus, MappingIssue
from app.store.counters import FAILED, PROFILES_EXCLUDED, PROFILES_RECEIVED, PROSPECTS_ACTIVATED

Kind = Literal[
    "failure_rate",
    "exclusion_rate",
    "reauth_required",
    "rate_limit_pause",
    "lag",
    "invalid_mapping",
    "mapping_conflict",
    "mapping_changed",
    "bulk_off",
    "enrollment_paused",
    "record_unreadable",
]

# Counter names of the totals hash (``Keys.counters``) the rates are computed from.
RECEIVED = PROFILES_RECEIVED
EXCLUDED = PROFILES_EXCLUDED
DELIVERED = PROSPECTS_ACTIVATED
FAILED = FAILED
WINDOW_COUNTERS = (RECEIVED, EXCLUDED, DELIVERED, FAILED)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the rules need to know about one destination."""

    destination: str
    counters: Mapping[str, int] = field(default_factory=dict)
    invalid_mapping_ids: tuple[int, ...] = ()
    user: str | None = None
    paused_until_s: float | None = None
    lag_s: float | None = None
    connection: str | None = None
    connection_state: str | None = None
    #: False when the destination is disabled (its backlog waits on purpose).
    enabled: bool | None = None
    #: Latest mapping ID change or conflict per audience (mapping IDs from the data).
    mapping_issues: tuple[MappingIssue, ...] = ()
    #: Why bulk delivery is off for the destination, when it is.
    bulk_off: BulkOffDoc | None = None
    #: Why the destination's stored record cannot be read, when it cannot.
    broken: str | None = None
    #: Why sequence enrollment is paused (a missing scope, a mailbox that cannot send).
    enrollment_paused: str | None = None


@dataclass(frozen=True, slots=True)
class LastHour:
    """Counter increases over the last hour (or since the first sample, if younger)."""

    received: int = 0
    excluded: int = 0
    delivered: int = 0
    failed: int = 0

    @classmethod
    def between(cls, old: Mapping[str, int], new: Mapping[str, int]) -> LastHour:
        # A counter that went down was reset: count from zero rather than go negative.
        def grew(name: str) -> int:
            before, now = old.get(name, 0), new.get(name, 0)
            return now - before if now >= before else now

        return cls(grew(RECEIVED), grew(EXCLUDED), grew(DELIVERED), grew(FAILED))


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule that holds; ``key`` names the incident (the same key: the same incident)."""

    key: str
    kind: Kind
    summary: str
    details: dict[str, Any]


def snapshot_from_status(doc: DestinationStatus) -> Snapshot:
    """What the rules need of ``app.ops.status.destination_status``'s document."""
    quota = doc.quota
    return Snapshot(
        destination=doc.destination,
        counters=doc.counters,
        invalid_mapping_ids=tuple(doc.invalid_mapping_ids),
        user=None if quota is None else quota.user,
        paused_until_s=None if quota is None else quota.paused_until_s,
        lag_s=doc.lag_s,
        connection=doc.connection.id,
        connection_state=doc.connection.state,
        enabled=doc.enabled,
        mapping_issues=tuple(doc.mapping_issues),
        bulk_off=doc.bulk.off,
        broken=doc.broken,
        enrollment_paused=doc.enrollment.paused_reason,
    )


def conditions(
    snap: Snapshot,
    window: LastHour,
    settings: Settings,
    *,
    pause_since_s: float | None,
    now_s: float,
) -> list[Condition]:
    """Every rule that holds for ``snap``; ``pause_since_s`` is when its user's current 429
    pause was first seen."""
    found = [
        *_rates(snap, window, settings),
        *_pause(snap, settings, pause_since_s, now_s),
        *_invalid_mappings(snap),
        *_mapping_issues(snap, now_s),
        *_bulk(snap),
        *_enrollment(snap),
    ]
    if snap.broken is not None:
        found.append(unreadable(Broken("destination", snap.destination, snap.broken)))
    if snap.connection_state == "reauth_required":
        who = snap.connection or snap.user or snap.destination
        found.append(
            Condition(
                f"reauth_required:{who}",
                "reauth_required",
                f"connection {who} needs re-authorization in Outreach",
                {"connection": who, "destination": snap.destination},
            )
        )
    # A disabled destination's changes wait on purpose: no lag incident (one open recovers).
    if snap.enabled is not False and snap.lag_s is not None and snap.lag_s > settings.alert_lag_s:
        found.append(
            Condition(
                f"lag:{snap.destination}",
                "lag",
                f"{snap.destination}: oldest pending change is {snap.lag_s:.0f} s old "
                f"(threshold {settings.alert_lag_s:.0f} s)",
                {"destination": snap.destination, "lag_s": round(snap.lag_s, 1)},
            )
        )
    return found


def _rates(snap: Snapshot, w: LastHour, s: Settings) -> list[Condition]:
    found = []
    attempted = w.delivered + w.failed
    if attempted >= s.alert_min_volume and w.failed / attempted > s.alert_failure_rate:
        found.append(
            _rate(snap, "failure_rate", "failed", w.failed, attempted, s.alert_failure_rate)
        )
    if w.received >= s.alert_min_volume and w.excluded / w.received > s.alert_exclusion_rate:
        found.append(
            _rate(
                snap, "exclusion_rate", "excluded", w.excluded, w.received, s.alert_exclusion_rate
            )
        )
    return found


def _rate(snap: Snapshot, kind: Kind, what: str, n: int, of: int, limit: float) -> Condition:
    return Condition(
        f"{kind}:{snap.destination}",
        kind,
        f"{snap.destination}: {n} of {of} {what} in the last hour ({n / of:.1%}, "
        f"threshold {limit:.1%})",
        {"destination": snap.destination, what: n, "of": of, "rate": round(n / of, 4)},
    )


def _pause(snap: Snapshot, s: Settings, since_s: float | None, now_s: float) -> list[Condition]:
    until = snap.paused_until_s
    if snap.user is None or until is None or until <= now_s or since_s is None:
        return []
    if until - since_s <= s.alert_paused_s:
        return []
    return [
        Condition(
            f"rate_limit_pause:{snap.user}",
            "rate_limit_pause",
            f"Outreach user {snap.user} paused by 429 for {until - since_s:.0f} s "
            f"(threshold {s.alert_paused_s:.0f} s)",
            {"user": snap.user, "paused_since_s": since_s, "paused_until_s": until},
        )
    ]


def _invalid_mappings(snap: Snapshot) -> list[Condition]:
    return [
        Condition(
            f"invalid_mapping:{snap.destination}:{m}",
            "invalid_mapping",
            f"{snap.destination}: Outreach refused mapping ID {m} (custom{m}); its changes fail "
            "until the destination is published again",
            {"destination": snap.destination, "mapping_id": m},
        )
        for m in snap.invalid_mapping_ids
    ]


def _mapping_issues(snap: Snapshot, now_s: float) -> list[Condition]:
    """A mapping ID changed or contested within the last hour: one incident per audience and
    mapping ID, recovered an hour after it last happened."""
    found = []
    for issue in snap.mapping_issues:
        if now_s - issue.at_ms / 1000 > mapping_issues.ALERT_WITHIN_S:
            continue
        kind: Kind = "mapping_conflict" if issue.kind == "conflict" else "mapping_changed"
        found.append(
            Condition(
                f"{kind}:{snap.destination}:{issue.audience}:{issue.mapping_id}",
                kind,
                f"{snap.destination}: {mapping_issues.describe(issue)}",
                {
                    "destination": snap.destination,
                    "audience": issue.audience,
                    "mapping_id": issue.mapping_id,
                },
            )
        )
    return found


def _bulk(snap: Snapshot) -> list[Condition]:
    """Outreach refused bulk (or charges it per record): backfills go by PATCH, slowly."""
    off = snap.bulk_off
    if off is None:
        return []
    return [
        Condition(
            f"bulk_off:{snap.destination}",
            "bulk_off",
            f"{snap.destination}: bulk delivery off for its {off.scope} ({off.reason}); "
            "delivery continues by PATCH",
            {"destination": snap.destination, **off.model_dump()},
        )
    ]


def _enrollment(snap: Snapshot) -> list[Condition]:
    """Enrollment paused: every enrollment would be refused alike until an operator acts."""
    if snap.enrollment_paused is None:
        return []
    return [
        Condition(
            f"enrollment_paused:{snap.destination}",
            "enrollment_paused",
            f"{snap.destination}: sequence enrollment paused ({snap.enrollment_paused}); "
            "field updates continue, enrollments wait",
            {"destination": snap.destination, "reason": snap.enrollment_paused},
        )
    ]


def unreadable(found: Broken) -> Condition:
    """A stored record that cannot be read: it is skipped (the rest work) until replaced."""
    return Condition(
        f"record_unreadable:{found.kind}:{found.id}",
        "record_unreadable",
        f"{found.kind} {found.id}: stored record unreadable ({found.reason}); it is skipped "
        "until it is replaced or deleted",
        found.as_dict(),
    )
