"""The findings of ``connections check``, each a line: ok, warn or fail, what was seen and
what to do. Pure functions of what the check gathered (no I/O), so the rules read in one
place; the signal parsing and the governing limit are the gate's own
(`app.outreach.signals`, `app.ratelimit.governing`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from app.config.destinations import Connection
from app.connections.oauth import BATCH_SCOPES, SEQUENCE_SCOPES
from app.connections.records import ConnectionRecord
from app.outreach.account import CustomFieldType, rate_headers
from app.outreach.answers import Answer
from app.outreach.signals import parse_budget, reset_form
from app.ratelimit.gate import QuotaState

Status = Literal["ok", "warn", "fail"]

#: Any of these lets the service write prospects (scopes are not additive: see the notes).
WRITE_SCOPES = ("prospects.write", "prospects.all")
READ_SCOPES = ("prospects.read", "prospects.all")
#: The header names the quota gate reads.
GATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@dataclass(frozen=True, slots=True)
class CheckLine:
    """One finding: ``status``, what was seen (``detail``) and, unless ok, what to do."""

    check: str
    status: Status
    detail: str
    action: str = ""


@dataclass(slots=True)
class CheckReport:
    """Every finding of one check, and the Outreach requests it cost."""

    connection: str
    lines: list[CheckLine] = field(default_factory=list)
    requests: int = 0

    @property
    def failed(self) -> bool:
        """Whether any line failed (the command then exits non-zero)."""
        return any(line.status == "fail" for line in self.lines)

    def add(self, check: str, status: Status, detail: str, action: str = "") -> None:
        self.lines.append(CheckLine(check, status, detail, action))

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON data."""
        lines = [
            {"check": x.check, "status": x.status, "detail": x.detail, "action": x.action}
            for x in self.lines
        ]
        ok = not self.failed
        return {"connection": self.connection, "ok": ok, "requests": self.requests, "lines": lines}


def scope_line(
    report: CheckReport, rec: ConnectionRecord, *, bulk: bool, write: bool, sequences: bool = False
) -> bool:
    """The scopes Outreach granted (as its token endpoint named them) against those needed;
    False when one is surely missing."""
    reauth = f"authorize again: outreach-sync connections authorize {rec.id}"
    if rec.scope is None:
        report.add(
            "scopes",
            "warn",
            f"not known: the tokens came from {rec.source}, without Outreach's scope list",
            f"{reauth} (Outreach names the scopes it grants; a 403 below also shows a gap)",
        )
        return True
    granted = set(rec.scope.split())
    needs: list[tuple[str, ...]] = [WRITE_SCOPES, *([READ_SCOPES] if write else [])]
    needs += [(s,) for s in BATCH_SCOPES] if bulk else []
    needs += [_any_of(s) for s in SEQUENCE_SCOPES] if sequences else []
    missing = [" or ".join(any_of) for any_of in needs if not granted & set(any_of)]
    if missing:
        uses = (("bulk delivery", bulk), ("sequence enrollment", sequences))
        on = [what for what, used in uses if used]
        why = f" ({' and '.join(on)} {'is' if len(on) == 1 else 'are'} on)" if on else ""
        report.add(
            "scopes",
            "fail",
            f"granted {rec.scope!r}; missing {', '.join(missing)}{why}",
            f"{reauth}: its authorize URL asks for what the destinations need",
        )
        return False
    report.add("scopes", "ok", f"granted {rec.scope!r}")
    return True


def _any_of(scope: str) -> tuple[str, ...]:
    """``users.read`` is granted by itself or by ``users.all``."""
    resource, _, _ = scope.partition(".")
    return tuple(dict.fromkeys((scope, f"{resource}.all")))


def token_line(report: CheckReport, rec: ConnectionRecord, status: int, answer: Answer) -> None:
    """Whether Outreach took the access token (the answer to ``GET /types``)."""
    refresh = "refreshable" if rec.refresh_token_enc else "not refreshable (no refresh token)"
    expiry = "expiry unknown"
    if rec.expires_at is not None:
        expiry = f"expires in {max(0, int(rec.expires_at - time.time())) // 60} min"
    if status == 401:
        report.add(
            "token",
            "fail",
            f"Outreach refused the access token (401); {refresh}",
            f"authorize again: outreach-sync connections authorize {rec.id}",
        )
    elif status == 403:
        first = answer.errors[0].id if answer.errors else None
        report.add(
            "token",
            "fail",
            f"Outreach refused GET /types (403 {first}): {answer.detail}",
            "grant the missing scope (authorize again) or ask the Outreach admin",
        )
    elif 200 <= status < 300:
        report.add("token", "ok", f"accepted by Outreach; {expiry}; {refresh}")
    else:
        report.add(
            "token",
            "warn",
            f"GET /types answered {status}: {answer.detail[:200]}",
            "run the check again; if it persists, look at Outreach's status",
        )


def header_line(report: CheckReport, headers: Mapping[str, str], now_s: float) -> None:
    """The rate-limit headers seen, by name and value, and the form of the reset."""
    seen = rate_headers(headers)
    if not seen:
        report.add(
            "rate-limit headers",
            "warn",
            "none in Outreach's answer",
            "nothing to do: the gate then models the quota from rate_limit alone; "
            "a 429's pause comes from Retry-After or its message",
        )
        return
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
    lower = {k.lower(): v for k, v in seen.items()}
    unread = [k for k in seen if k.lower() not in GATE_HEADERS and k.lower() != "retry-after"]
    reset = lower.get("x-ratelimit-reset")
    form = reset_form(reset)
    if reset is not None and form is None:
        report.add(
            "rate-limit headers",
            "warn",
            f"{shown}; the reset is in no known form",
            "report it (app/outreach/signals.py reads the reset): until then a 429 "
            "pauses for RATE_LIMIT_FALLBACK_PAUSE_S",
        )
    elif not any(k in lower for k in GATE_HEADERS):
        report.add(
            "rate-limit headers",
            "warn",
            f"{shown}; none of them X-RateLimit-*",
            "report the names (app/outreach/signals.py): the gate reads only "
            "X-RateLimit-Limit/-Remaining/-Reset",
        )
    else:
        extra = f"; also {', '.join(unread)} (not read)" if unread else ""
        budget = parse_budget(headers, now_s=now_s)
        when = (
            ""
            if budget is None or budget.reset_s is None
            else f", in {budget.reset_s - now_s:.0f} s"
        )
        report.add("rate-limit headers", "ok", f"{shown}; reset as {form or 'absent'}{when}{extra}")


def quota_line(report: CheckReport, conn: Connection, answer: Answer, state: QuotaState) -> None:
    """What the quota gate does with what Outreach reported (its recorded state)."""
    limits = state.limits
    budget = answer.budget
    told = "no figure from Outreach"
    if budget is not None and budget.remaining is not None:
        told = f"Outreach says {budget.remaining} left"
        if budget.reset_s is not None:
            told += f", window resets {_iso(budget.reset_s)}"
    why = (
        "Outreach's reported limit, at or below the configured one"
        if limits.source == "reported"
        else "the configured rate_limit"
        + (" (Outreach reports none)" if limits.reported is None else ", below Outreach's")
    )
    detail = (
        f"{told}; governing limit {limits.governing} per window ({why}); one at a time "
        f"below {limits.careful} left; reserve_share {conn.reserve_share}"
    )
    if state.paused_until_s is not None:
        report.add(
            "quota gate",
            "warn",
            f"{detail}; paused until {_iso(state.paused_until_s)}",
            "nothing to do: sending resumes then by itself",
        )
    elif limits.reported is not None and limits.reported != limits.configured:
        report.add(
            "quota gate",
            "warn",
            f"{detail}; configured rate_limit {conn.rate_limit}",
            f"set rate_limit to {limits.reported} per Outreach's window to match "
            "(outreach-sync connections add ... --rate-limit)",
        )
    else:
        report.add("quota gate", "ok", detail)


def field_lines(
    report: CheckReport,
    types: dict[str, CustomFieldType] | str,
    users: Mapping[str, list[str]],
    *,
    learning: list[str],
) -> list[str]:
    """Each custom field written, against the account's; returns the usable ones (when the
    account's cannot be read, every one: writing a value a field holds is harmless)."""
    for dest in learning:
        report.add(
            f"mapping IDs of {dest}",
            "warn",
            "learned from the data; none seen yet",
            "run the check again once the first profiles arrived",
        )
    if isinstance(types, str):
        if users:
            report.add(
                "custom fields",
                "warn",
                f"{types}; {', '.join(sorted(users))} unchecked",
                "check them in Outreach (Settings > Fields > Prospect) by hand",
            )
        return sorted(users, key=_number)
    usable: list[str] = []
    for name in sorted(users, key=_number):
        who = "; ".join(users[name])
        found = types.get(name)
        label = "" if found is None or not found.label else f" ({found.label!r})"
        if found is None:
            report.add(
                name,
                "fail",
                f"not configured on the account; written by {who}",
                f"create {name} in Outreach as a text field, or change the mapping ID",
            )
        elif found.read_only:
            report.add(
                name,
                "fail",
                f"read-only on the account{label}; written by {who}",
                f"make {name} writable in Outreach, or change the mapping ID",
            )
        elif found.holds_text is False:
            report.add(
                name,
                "fail",
                f"a {found.data_type} field{label}; written by {who}",
                f"make {name} a text field in Outreach: statuses are text",
            )
        elif found.holds_text is None:
            usable.append(name)
            report.add(
                name,
                "warn",
                f"present{label}, type not stated; written by {who}",
                "make sure it is a text field in Outreach",
            )
        else:
            usable.append(name)
            report.add(name, "ok", f"{found.data_type}, writable{label}; written by {who}")
    return usable


def charge_line(report: CheckReport, before: int | None, after: int | None) -> None:
    """What one bulk call of one record cost of the quota, by Outreach's own figures."""
    if before is None or after is None:
        report.add(
            "bulk charge",
            "warn",
            "not measurable: Outreach sent no remaining figure",
            "watch the bulk figures of `outreach-sync status` after a first backfill",
        )
        return
    charged = before - after
    detail = f"X-RateLimit-Remaining {before} -> {after}: charged {charged} for 1 record"
    if charged <= 1:
        report.add("bulk charge", "ok", detail + " (one request per call)")
    else:
        report.add(
            "bulk charge",
            "warn",
            detail + " (other traffic of the user, or per record?)",
            "run it again when the user is idle; charged per record, bulk turns itself off",
        )


def _number(custom: str) -> int:
    return int(custom.removeprefix("custom"))


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
