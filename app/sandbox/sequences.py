"""Sequences, mailboxes and sequence states, with the ruleset gates Outreach applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.sandbox.errors import ApiError
from app.sandbox.timestamps import iso

PermitDuplicates = Literal["allow", "disallow", "only_if_inactive"]
DisabledMode = Literal["refuse", "pending"]
#: States that hold a prospect in a sequence (for duplicates and exclusivity).
LIVE = frozenset({"active", "paused", "pending"})
#: Which states each action leaves from, and the state it leads to.
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "pause": (frozenset({"active", "pending"}), "paused"),
    "resume": (frozenset({"paused"}), "active"),
    "finish": (
        frozenset({"active", "paused", "pending", "failed", "bounced", "disabled"}),
        "finished",
    ),
}


class SequenceDef(BaseModel):
    """A sequence and its ruleset, as the control API defines it."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=1)
    name: str = "Sequence"
    enabled: bool = True
    exclusive: bool = False
    permit_duplicate_prospects: PermitDuplicates = "disallow"


class Mailbox(BaseModel):
    """A user's mailbox; `default` marks the user's default, `can_send` False one that cannot."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=1)
    user: str = Field(min_length=1)
    email: str = "sender@example.com"
    default: bool = False
    can_send: bool = True


@dataclass(slots=True)
class SequenceState:
    """One prospect's membership of one sequence."""

    id: int
    prospect_id: int
    sequence_id: int
    mailbox_id: int
    state: str
    created_at: float
    state_changed_at: float
    pause_reason: str | None = None
    error_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The sequenceState resource."""
        return {
            "type": "sequenceState",
            "id": self.id,
            "attributes": {
                "state": self.state,
                "createdAt": iso(self.created_at),
                "updatedAt": iso(self.state_changed_at),
                "stateChangedAt": iso(self.state_changed_at),
                "pauseReason": self.pause_reason,
                "errorReason": self.error_reason,
            },
            "relationships": {
                "prospect": {"data": {"type": "prospect", "id": self.prospect_id}},
                "sequence": {"data": {"type": "sequence", "id": self.sequence_id}},
                "mailbox": {"data": {"type": "mailbox", "id": self.mailbox_id}},
            },
        }


def refusal(detail: str, code: str, pointer: str | None = None) -> ApiError:
    """A 422 whose `code` names the gate, as Outreach's sequence-state refusals do."""
    return ApiError(422, "validationError", "Validation Error", detail, pointer, code=code)


@dataclass(slots=True)
class Sequencing:
    """Every sequence, mailbox, opted-out prospect and sequence state of one sandbox."""

    sequences: dict[int, SequenceDef] = field(default_factory=dict)
    mailboxes: dict[int, Mailbox] = field(default_factory=dict)
    opted_out: set[int] = field(default_factory=set)
    states: dict[int, SequenceState] = field(default_factory=dict)
    next_state: int = 1

    def default_mailbox(self, user: str) -> Mailbox | None:
        """The user's default mailbox, else their first one."""
        own = sorted((m for m in self.mailboxes.values() if m.user == user), key=lambda m: m.id)
        return next((m for m in own if m.default), own[0] if own else None)

    def enroll(
        self,
        *,
        prospect_id: int,
        sequence: SequenceDef,
        mailbox: Mailbox,
        opted_out: bool,
        disabled: DisabledMode,
        now: float,
    ) -> SequenceState:
        """A new state, or the 422 of the first ruleset gate that refuses it."""
        state = "active"
        if not sequence.enabled:
            if disabled == "refuse":
                raise refusal("The sequence is disabled.", "sequence is disabled")
            state = "pending"
        if not mailbox.can_send:
            raise refusal("The mailbox is not able to send emails.", "mailbox cannot send")
        if opted_out or prospect_id in self.opted_out:
            raise refusal("The prospect has opted out.", "prospect has opted out")
        self._check_duplicates(prospect_id, sequence)
        self._check_exclusive(prospect_id, sequence)
        created = SequenceState(
            self.next_state, prospect_id, sequence.id, mailbox.id, state, now, now
        )
        self.states[created.id] = created
        self.next_state += 1
        return created

    def act(self, found: SequenceState, action: str, now: float) -> None:
        """Apply finish/pause/resume, or a 422 when it does not apply to the state."""
        sources, target = TRANSITIONS[action]
        if found.state not in sources:
            detail = f"Cannot {action} a sequence state that is {found.state}."
            raise ApiError(422, "validationError", "Validation Error", detail)
        found.state, found.state_changed_at = target, now
        found.pause_reason = "Paused through the API" if target == "paused" else None

    def find(
        self, *, prospect_ids: set[int] | None, sequence_ids: set[int] | None
    ) -> list[SequenceState]:
        """The states matching both filters (None: any), by id."""
        return [
            s
            for s in self.states.values()
            if (prospect_ids is None or s.prospect_id in prospect_ids)
            and (sequence_ids is None or s.sequence_id in sequence_ids)
        ]

    def _check_duplicates(self, prospect_id: int, sequence: SequenceDef) -> None:
        rule = sequence.permit_duplicate_prospects
        if rule == "allow":
            return
        earlier = self.find(prospect_ids={prospect_id}, sequence_ids={sequence.id})
        if rule == "only_if_inactive":
            earlier = [s for s in earlier if s.state in LIVE]
        if earlier:
            detail = "The prospect has already been in this sequence."
            raise refusal(detail, "has already been in this sequence")

    def _check_exclusive(self, prospect_id: int, sequence: SequenceDef) -> None:
        if not sequence.exclusive:
            return
        for other in self.find(prospect_ids={prospect_id}, sequence_ids=None):
            held = self.sequences.get(other.sequence_id)
            if other.state in LIVE and held is not None and held.exclusive:
                detail = "The prospect is already active in an exclusive sequence."
                raise refusal(detail, "already active in an exclusive sequence")
