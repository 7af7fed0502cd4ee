"""OAuth scopes: what a token given without an OAuth dance holds, and what a route needs."""

from __future__ import annotations

#: Static and control-registered tokens hold every scope the sandbox checks, so tests that
#: do not care about scopes never meet a 403; OAuth grants hold what was asked for.
ALL_SCOPES = (
    "prospects.all batches.read batches.write sequences.all sequenceStates.all "
    "mailboxes.read users.read"
)


def allows(granted: str, needed: str) -> bool:
    """Whether the space-separated `granted` scopes cover `needed` (`<resource>.read` or
    `.write`): the scope itself or `<resource>.all`; `.write` does not imply `.read`."""
    names = set(granted.split())
    resource = needed.partition(".")[0]
    return needed in names or f"{resource}.all" in names
