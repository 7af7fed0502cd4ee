"""Sequence enrollment of a destination: which audiences put their prospects into which
Outreach sequence, with which mailbox, and what happens when they leave (docs/admin.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from app.core.keys import ENROLL_RETRY_BASE_S, ENROLL_RETRY_CAP_S

#: Outreach's 422 for a prospect who is (or was) in the sequence: matched on the first
#: error's ``code`` or ``detail`` (case-insensitive substring).
ALREADY_TEXTS = ("has already been in this sequence",)

Key = Annotated[str, StringConstraints(min_length=1)]


def _mailbox(value: int | str) -> int | str:
    if (isinstance(value, int) and value >= 1) or value in ("owner", "connection-user"):
        return value
    raise ValueError('must be a mailbox id (a positive integer), "owner" or "connection-user"')


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, hide_input_in_errors=True, allow_inf_nan=False
    )


class SequenceRule(_Model):
    """One audience's sequence: entering enrolls, exiting finishes, pauses or does nothing."""

    sequence: Annotated[StrictInt, Field(ge=1)]
    #: A mailbox id, the prospect's owner's default mailbox, or the connection user's.
    mailbox: Annotated[StrictInt | str, AfterValidator(_mailbox)] = "connection-user"
    on_exit: Literal["none", "finish", "pause"] = "none"
    #: Enroll a prospect again who left the audience and came back (Outreach's ruleset may
    #: still refuse it: reported as a refusal).
    reenroll: bool = False


class Sequencing(_Model):
    """Off unless ``sequences`` names an audience."""

    sequences: dict[Key, SequenceRule] = Field(default_factory=dict)
    #: Record what would be done (counted, visible) without calling Outreach.
    dry_run: bool = False
    #: Most of the user's quota enrollment may spend, so field updates are never starved.
    quota_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25
    #: Enrollments (or exits) sent per drain at most.
    per_drain: Annotated[StrictInt, Field(ge=1, le=1000)] = 50
    #: A transient failure is retried this many times, then recorded as failed.
    max_attempts: Annotated[StrictInt, Field(ge=1, le=100)] = 12
    #: How long enrollment stays paused after a missing scope or a mailbox that cannot send.
    pause_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    already_texts: list[Key] = Field(default_factory=lambda: list(ALREADY_TEXTS), min_length=1)
    #: Backoff of a send without a usable answer: base * 2**attempts, capped, with jitter.
    retry_base_s: Annotated[float, Field(gt=0, le=3600)] = ENROLL_RETRY_BASE_S
    retry_cap_s: Annotated[float, Field(gt=0, le=86_400)] = ENROLL_RETRY_CAP_S

    @property
    def enabled(self) -> bool:
        """Some audience enrolls."""
        return bool(self.sequences)
