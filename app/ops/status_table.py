"""``outreach-sync status`` for people: status documents (app/ops/status.py) as aligned text."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _clock(epoch_s: float | None) -> str:
    return "-" if epoch_s is None else time.strftime("%H:%M:%SZ", time.gmtime(epoch_s))


def _reasons(by_reason: Mapping[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in by_reason.items())})" if by_reason else ""


def _flow(label: str, m: Mapping[str, Any]) -> list[str]:
    return [
        f"  {label:<10}received {m['profiles_received']}  accepted {m['profiles_accepted']}  "
        f"excluded {m['profiles_excluded']}{_reasons(m['excluded_by_reason'])}  "
        f"rejected {m['profiles_rejected']}",
        f"  {'':<10}activated {m['prospects_activated']} prospects / {m['fields_activated']} "
        f"fields  no-op {m['prospects_skipped_noop']}  failed {m['failed']}"
        f"{_reasons(m['failed_by_reason'])}  retried {m['retried']}  429s {m['rate_limited']}  "
        f"requests {m['requests']}",
    ]


def _quota(q: Mapping[str, Any]) -> str:
    told = q.get("server_remaining")
    said = f"  outreach says {told}" if told is not None else ""
    paused = q.get("paused_until_s")
    pause = f"  PAUSED until {_clock(paused)}" if paused else ""
    return (
        f"  {'quota':<10}{q['user']}: used {q['used']} of {q['limit']}  "
        f"remaining {q['remaining']}  resets {_clock(q.get('reset_s'))}{said}{pause}"
    )


def _audiences(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines: list[list[str]] = [list(AUDIENCE_HEAD)]
    for r in rows:
        t = r["totals"]
        name = r["audience"] or "(no longer mapped)"
        if r.get("invalid"):
            name += "  [mapping ID refused by Outreach]"
        by = t["activated_by_status"]
        lines.append(
            [
                name,
                str(r["mapping_id"]),
                str(t["received"]),
                str(t["activated"]),
                *(str(by.get(s, 0)) for s in ("realized", "existing", "exited")),
                str(t["skipped_noop"]),
                str(t["excluded"]),
                str(t["failed"]),
            ]
        )
    return ["  " + line for line in table(lines)]


def destination_block(d: Mapping[str, Any]) -> list[str]:
    conn = d.get("connection") or {}
    state = conn.get("state") or ("unknown connection" if not conn.get("known") else "-")
    head = (
        f"{d['destination']} ({d.get('name', '')})  {'enabled' if d['enabled'] else 'DISABLED'}"
        f"  connection {conn.get('id', '-')}: {state}"
    )
    if conn.get("reason") and state != "active":
        head += f" ({conn['reason']})"
    lines = [
        head,
        f"  {'backlog':<10}pending {d['pending']}  in flight {d['in_flight']}  "
        f"lag {duration(d.get('lag_s'))}{'' if d.get('lag_exact', True) else ' (sampled)'}",
    ]
    if d.get("quota"):
        lines.append(_quota(d["quota"]))
    m = d["metrics"]
    lines += _flow(f"last {m['window']['hours']}h", m["window"])
    lines += _flow("total", m["totals"])
    if d["audiences"]:
        lines += ["", *_audiences(d["audiences"])]
    return lines


def render_table(docs: Sequence[Mapping[str, Any]]) -> str:
    """Every destination's block, separated by a blank line."""
    if not docs:
        return "no destinations configured"
    return "\n\n".join("\n".join(destination_block(d)) for d in docs)
