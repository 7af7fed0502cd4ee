"""Pure rules of enrollment: which delivered audience fields call for an enrollment or an
exit, and what an Outreach refusal of one means. No Redis, no HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.config.destinations import Destination
from app.enroll.store import Intent
from app.outreach import fields as outreach_fields

#: A refusal whose cure is the operator's (not the prospect's): enrollment pauses.
PAUSING = frozenset({"scope_missing", "mailbox_cannot_send", "mailbox_missing"})

# Outreach's 422 texts for its ruleset gates (the sandbox's; Outreach's own are partly
# unconfirmed, so an unknown text is kept verbatim as the reason).
_REASONS = (
    ("opted out", "opted_out"),
    ("exclusive", "exclusive_sequence"),
    ("disabled", "sequence_disabled"),
    ("locked", "sequence_locked"),
    ("mailbox cannot send", "mailbox_cannot_send"),
    ("mailbox can't be blank", "mailbox_missing"),
)


def audience_fields(dest: Destination, learned: Mapping[str, int]) -> dict[str, str]:
    """``customN`` -> audience, for the audiences of ``dest`` that enroll."""
    table = {**learned, **dest.audiences}
    out: dict[str, str] = {}
    for audience in dest.sequencing.sequences:
        n = table.get(audience)
        if n is not None:
            out[outreach_fields.custom_field(n)] = audience
    return out


def intents(
    dest: Destination, by_field: Mapping[str, str], prospect: int, delivered: Mapping[str, Any]
) -> list[Intent]:
    """The enrollments and exits the delivered ``fields`` of one prospect call for."""
    values = dest.status_values
    entry = {values.get("realized"), values.get("existing")} - {None}
    exit_value = values.get("exited")
    out: list[Intent] = []
    for name, value in delivered.items():
        audience = by_field.get(name)
        if audience is None:
            continue
        rule = dest.sequencing.sequences[audience]
        if value in entry:
            kind = "in"
        elif value == exit_value or (value is None and exit_value is None):
            kind = "out"
        else:
            continue
        out.append(
            Intent(prospect, rule.sequence, audience, kind, rule.reenroll, rule.on_exit)  # type: ignore[arg-type]
        )
    return out


@dataclass(frozen=True, slots=True)
class Refusal:
    """Outreach's 4xx to an enrollment, read."""

    already: bool
    reason: str
    text: str

    @property
    def pauses(self) -> bool:
        """Every enrollment of the destination would be refused alike."""
        return self.reason in PAUSING


def error_texts(body: str) -> tuple[str, str]:
    """The first JSON:API error's ``code`` and ``detail`` (empty when absent)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "", body[:200]
    errs = doc.get("errors") if isinstance(doc, dict) else None
    first = errs[0] if isinstance(errs, list) and errs and isinstance(errs[0], dict) else {}
    return str(first.get("code") or first.get("id") or ""), str(
        first.get("detail") or first.get("title") or ""
    )


def read_refusal(status: int, body: str, *, already_texts: Iterable[str]) -> Refusal:
    """What a 4xx to ``POST /sequenceStates`` means: already in, or refused and why."""
    code, detail = error_texts(body)
    text = f"{code}: {detail}".strip(": ")
    hay = f"{code}\n{detail}".lower()
    if status == 422 and any(t.lower() in hay for t in already_texts):
        return Refusal(True, "already", text)
    if status == 403:
        return Refusal(False, "scope_missing", text)
    for needle, reason in _REASONS:
        if needle in hay:
            return Refusal(False, reason, text)
    return Refusal(False, f"http_{status}", text)
