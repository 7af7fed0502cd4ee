"""Adding a prospect to a sequence: one implementation for the API and for bulk batches."""

from __future__ import annotations

from typing import Any

from app.sandbox.config import SandboxConfig
from app.sandbox.errors import not_found
from app.sandbox.sequences import Mailbox, SequenceState, Sequencing, refusal

_OPT_OUT_ATTRIBUTES = ("optedOut", "emailOptedOut")


def enroll(
    sequencing: Sequencing,
    *,
    prospect: dict[str, Any] | None,
    prospect_id: int,
    sequence_id: int,
    mailbox_id: int | None,
    user: str,
    config: SandboxConfig,
    now: float,
) -> SequenceState:
    """Enroll `prospect` (None: it does not exist); raises the ApiError Outreach would send."""
    if prospect is None:
        raise not_found(str(prospect_id))
    sequence = sequencing.sequences.get(sequence_id)
    if sequence is None:
        raise not_found(str(sequence_id), "sequence")
    return sequencing.enroll(
        prospect_id=prospect_id,
        sequence=sequence,
        mailbox=resolve_mailbox(sequencing, mailbox_id, user, config),
        opted_out=any(prospect.get(name) is True for name in _OPT_OUT_ATTRIBUTES),
        disabled=config.disabled_sequence,
        now=now,
    )


def resolve_mailbox(
    sequencing: Sequencing, mailbox_id: int | None, user: str, config: SandboxConfig
) -> Mailbox:
    """The named mailbox (404 if unknown), or when none is named the user's default if the
    config allows it (422 otherwise)."""
    if mailbox_id is not None:
        found = sequencing.mailboxes.get(mailbox_id)
        if found is None:
            raise not_found(str(mailbox_id), "mailbox")
        return found
    fallback = (
        sequencing.default_mailbox(user) if config.enroll_without_mailbox == "default" else None
    )
    if fallback is None:
        pointer = "/data/relationships/mailbox"
        raise refusal("Mailbox can't be blank.", "mailbox can't be blank", pointer)
    return fallback
