"""What an email's lookup means for its changes: pure rules, testable without Redis or HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.config.destinations import Identity
from app.resolve.emails import Matches

#: Failure reasons (countable, replayable like any other failure).
NOT_FOUND = "no prospect with this email"
AMBIGUOUS = "several prospects have this email"


@dataclass(frozen=True, slots=True)
class Decision:
    """``adopt``: send to ``prospects``; ``create``: create one; ``fail``: record ``reason``."""

    action: Literal["adopt", "create", "fail"]
    prospects: tuple[int, ...] = ()
    reason: str = ""
    detail: str = ""


def decide(matches: Matches, identity: Identity) -> Decision:
    """The prospect(s) an email's changes go to under the destination's rules."""
    ids = tuple(dict.fromkeys(p for p, _ in matches))
    if not ids:
        if identity.on_missing == "create":
            return Decision("create")
        return Decision("fail", reason=NOT_FOUND, detail=NOT_FOUND)
    if len(ids) == 1 or identity.on_ambiguous == "all":
        return Decision("adopt", ids)
    if identity.on_ambiguous == "newest":
        newest = max(matches, key=lambda m: (m[1], m[0]))  # ISO 8601 sorts as text; ties: id
        return Decision("adopt", (newest[0],))
    shown = ", ".join(str(p) for p in ids)
    return Decision("fail", reason=AMBIGUOUS, detail=f"{AMBIGUOUS}: prospects {shown}")
