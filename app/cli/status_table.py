"""``outreach-sync status`` for people: status documents (app/ops/status.py) as aligned text."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from app.ops.status_doc import (
    AudienceRow,
    DestinationStatus,
    Flow,
    Quota,
    ResolveStatus,
    duration,
)

AUDIENCE_HEAD = (
    "AUDIENCE",
    "MAPPING ID",
    "RECEIVED",
    "ACTIVATED",
    "REALIZED",
    "EXISTING",
    "EXITED",
    "NO-OP",
    "EXCLUDED",
    "FAILED",
)
#: Columns right-aligned (numbers).
_NUMERIC_FROM = 1


def table(rows: Sequence[Sequence[str]], *, numeric_from: int = _NUMERIC_FROM) -> list[str]:
    """Rows as aligned columns: text left, numbers (columns from ``numeric_from``) right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            c.rjust(w) if i >= numeric_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _clock(epoch_s: float | None) -> str:
    return "-" if epoch_s is None else time.strftime("%H:%M:%SZ", time.gmtime(epoch_s))


def _reasons(by_reason: Mapping[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in by_reason.items())})" if by_reason else ""


def _flow(label: str, m: Flow) -> list[str]:
    return [
        f"  {label:<10}received {m.profiles_received}  accepted {m.profiles_accepted}  "
        f"excluded {m.profiles_excluded}{_reasons(m.excluded_by_reason)}  "
        f"rejected {m.profiles_rejected}",
        f"  {'':<10}left out: audiences ignored {m.audiences_ignored}  attributes not mapped "
        f"{m.attributes_unmapped}{_reasons(m.unmapped_by_attribute)}  attributes rejected "
        f"{m.attributes_rejected}",
        f"  {'':<10}activated {m.prospects_activated} prospects / {m.fields_activated} "
        f"fields  no-op {m.prospects_skipped_noop}  failed {m.failed}"
        f"{_reasons(m.failed_by_reason)}  retried {m.retried}  429s {m.rate_limited}  "
        f"requests {m.requests}",
    ]


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def per(window_s: int) -> str:
    """A quota window's length in words: ``hour``, ``minute``, ``day`` or ``90 s``."""
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(window_s, f"{window_s} s")


def quota_lines(q: Quota) -> list[str]:
    """The quota, each figure named for whose count it is: Outreach's, then ours."""
    pause = f"  PAUSED until {_clock(q.paused_until_s)}" if q.paused_until_s else ""
    if q.reported_limit is None or q.server_reset_s is None:
        outreach = "Outreach has reported nothing for this window"
    else:
        outreach = (
            f"Outreach's count: spent {_or_dash(q.outreach_spent)} of {q.reported_limit}  "
            f"left {_or_dash(q.server_remaining)}  resets {_clock(q.server_reset_s)}"
        )
    return [
        f"  {'quota':<10}{q.user}: {outreach}{pause}",
        f"  {'':<10}our window: {q.used} of {q.limit}  remaining {q.remaining}  "
        f"resets {_clock(q.reset_s)}",
        f"  {'':<10}limit per {per(q.window_s)}: configured {q.configured_limit}  "
        f"Outreach reports {_or_dash(q.reported_limit)}  governing {q.governing_limit} "
        f"({q.governing_why})",
    ]


def _audiences(rows: Sequence[AudienceRow]) -> list[str]:
    lines: list[list[str]] = [list(AUDIENCE_HEAD)]
    for r in rows:
        t = r.totals
        name = r.audience or "(no longer mapped)"
        if r.invalid:
            name += "  [mapping ID refused by Outreach]"
        if r.mapping_issue:
            name += f"  [{r.mapping_issue}]"
        by = t.activated_by_status
        lines.append(
            [
                name,
                str(r.mapping_id),
                str(t.received),
                str(t.activated),
                *(str(by.get(s, 0)) for s in ("realized", "existing", "exited")),
                str(t.skipped_noop),
                str(t.excluded),
                str(t.failed),
            ]
        )
    return ["  " + line for line in table(lines)]


def resolve_lines(r: ResolveStatus) -> list[str]:
    """Identity resolution, for a destination that reaches prospects by email."""
    if not r.by_email and not r.waiting:
        return []
    return [
        f"  {'by email':<10}waiting {r.waiting} (resolving {r.resolving}, oldest "
        f"{duration(r.oldest_waiting_s)})  missing: {r.on_missing}  "
        f"ambiguous: {r.on_ambiguous}",
        f"  {'':<10}from cache {r.from_cache}  by lookup {r.by_lookup} ({r.lookups} "
        f"lookups)  not found {r.not_found}  ambiguous {r.ambiguous}  created {r.created}"
        f"  gone {r.gone}",
    ]


def destination_block(d: DestinationStatus) -> list[str]:
    if d.broken is not None:
        return [
            f"{d.destination}  BROKEN: its stored record cannot be read ({d.broken})",
            f"  {'':<10}replace it (outreach-sync destinations update {d.destination} FILE) "
            "or delete it; its changes wait",
            f"  {'backlog':<10}pending {d.pending}  in flight {d.in_flight}  "
            f"lag {duration(d.lag_s)}",
        ]
    conn = d.connection
    state = conn.state or ("unknown connection" if not conn.known else "-")
    head = (
        f"{d.destination} ({d.name})  {'enabled' if d.enabled else 'DISABLED'}"
        f"  connection {conn.id}: {state}"
    )
    if conn.reason and state != "active":
        head += f" ({conn.reason})"
    lines = [
        head,
        f"  {'backlog':<10}pending {d.pending}  in flight {d.in_flight}  "
        f"lag {duration(d.lag_s)}{'' if d.lag_exact else ' (sampled)'}",
    ]
    if d.quota is not None:
        lines += quota_lines(d.quota)
    lines += resolve_lines(d.resolve)
    m = d.metrics
    lines += _flow(f"last {m.window.hours}h", m.window)
    lines += _flow("total", m.totals)
    if d.audiences:
        lines += ["", *_audiences(d.audiences)]
    return lines


def render_table(docs: Sequence[DestinationStatus]) -> str:
    """Every destination's block, separated by a blank line."""
    if not docs:
        return "no destinations configured"
    return "\n\n".join("\n".join(destination_block(d)) for d in docs)
