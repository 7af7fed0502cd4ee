"""Bulk modification batches: created at once, worked through later at a configured speed.

Processing is lazy: whoever looks (a batch read, the control API) first ``advance``s every
batch to what the clock says it has done, so a run replays the same whatever the polling.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.sandbox.attributes import check_name, check_value
from app.sandbox.timestamps import iso

#: What the sandbox does with the batches created while it is set.
BatchFault = Literal["none", "stick", "cancel"]
MODIFY = "prospectsBulkModify"
ADD_TO_SEQUENCE = "prospectsAddToSequence"
#: Applies a batch's attributes to one prospect; the reason (Outreach's ``info``) on failure.
Applier = Callable[[int, dict[str, Any]], str | None]
_DONE_WORD = {MODIFY: "modified", ADD_TO_SEQUENCE: "added"}


@dataclass(slots=True)
class Item:
    """One record of a batch: the prospect, and what became of it."""

    id: int
    prospect_id: int
    state: str = "pending"
    failed: bool = False
    info: str | None = None


@dataclass(slots=True)
class Batch:
    """One bulk action: the same attributes (modification, or sequence and mailbox) for
    every listed prospect."""

    id: int
    attributes: dict[str, Any]
    items: list[Item]
    created_at: float
    fault: BatchFault
    confirmed: bool
    started_at: float | None = None
    finished_at: float | None = None
    canceled_at: float | None = None
    done: int = 0
    failures: int = 0
    action: str = MODIFY

    @property
    def state(self) -> str:
        """Outreach does not enumerate its state names; these are the sandbox's."""
        if self.canceled_at is not None:
            return "canceled"
        if self.finished_at is not None:
            return "finished"
        if not self.confirmed:
            return "awaiting_confirmation"
        return "pending" if self.done == 0 else "running"

    def to_json(self) -> dict[str, Any]:
        """The Batch resource."""
        total = len(self.items)
        return {
            "type": "batch",
            "id": self.id,
            "attributes": {
                "action": self.action,
                "state": self.state,
                "total": total,
                "pending": total - self.done,
                "failures": self.failures,
                "summary": (
                    f"{self.done - self.failures} {_DONE_WORD.get(self.action, 'done')}, "
                    f"{self.failures} failed"
                ),
                "confirmCount": total,
                "confirmedCountRequired": not self.confirmed,
                "createdAt": iso(self.created_at),
                "startedAt": iso(self.started_at),
                "finishedAt": iso(self.finished_at),
                "canceledAt": iso(self.canceled_at),
            },
        }

    def item_json(self, item: Item) -> dict[str, Any]:
        """The Batch Item resource; ``data`` is what was asked for the record, as a string."""
        data = json.dumps({"id": item.prospect_id, **self.attributes}, sort_keys=True)
        return {
            "type": "batchItem",
            "id": item.id,
            "attributes": {
                "batchId": self.id,
                "state": item.state,
                "failed": item.failed,
                "info": item.info,
                "data": data,
            },
        }


@dataclass(slots=True)
class Batches:
    """Every batch of one sandbox, and the prospects they wrote."""

    batches: dict[int, Batch] = field(default_factory=dict)
    next_item: int = 1

    def create(
        self,
        attributes: dict[str, Any],
        ids: list[int],
        *,
        now: float,
        fault: BatchFault,
        confirmed: bool,
        action: str = MODIFY,
    ) -> Batch:
        """A new batch over ``ids`` (validated by the caller: never empty)."""
        items = [Item(self.next_item + i, pid) for i, pid in enumerate(ids)]
        self.next_item += len(items)
        batch = Batch(len(self.batches) + 1, dict(attributes), items, now, fault, confirmed)
        batch.action = action
        if confirmed:
            batch.started_at = now
        self.batches[batch.id] = batch
        return batch

    def confirm(self, batch: Batch, now: float) -> None:
        """Start a batch that waited for confirmation."""
        if not batch.confirmed:
            batch.confirmed, batch.started_at = True, now

    def cancel(self, batch: Batch, now: float) -> None:
        """Stop a batch; records not yet done stay unmodified."""
        if batch.finished_at is None and batch.canceled_at is None:
            batch.canceled_at = now

    def advance(self, now: float, *, records_per_s: float, appliers: Mapping[str, Applier]) -> None:
        """Work every running batch through to where ``records_per_s`` says it is by now."""
        for batch in self.batches.values():
            _advance(batch, now, records_per_s, appliers[batch.action])


class Apply:
    """Writes one record of a bulk modification, if the prospect exists."""

    def __init__(
        self,
        write: Callable[[int, dict[str, Any]], object],
        *,
        exists: Callable[[int], bool],
        usable_custom_fields: int,
    ) -> None:
        self.write = write
        self.exists = exists
        self.usable_custom_fields = usable_custom_fields
        self.records = 0

    def __call__(self, prospect_id: int, attributes: dict[str, Any]) -> str | None:
        """Write one prospect; the reason (Outreach's ``info``) when it cannot be."""
        for name, value in attributes.items():
            error = check_name(name, self.usable_custom_fields) or check_value(name, value)
            if error is not None:
                return error.detail
        if not self.exists(prospect_id):
            return f"Could not find 'prospect' with ID '{prospect_id}'."
        self.write(prospect_id, attributes)
        self.records += 1
        return None


def _advance(batch: Batch, now: float, records_per_s: float, apply: Applier) -> None:
    if batch.started_at is None or batch.finished_at or batch.canceled_at:
        return
    if batch.fault == "cancel":
        batch.canceled_at = now
        return
    if batch.fault == "stick":
        return
    target = min(len(batch.items), int((now - batch.started_at) * records_per_s))
    for item in batch.items[batch.done : target]:
        info = apply(item.prospect_id, batch.attributes)
        item.state, item.failed, item.info = (
            ("failed", True, info) if info else ("done", False, None)
        )
        batch.failures += bool(info)
    batch.done = max(batch.done, target)
    if batch.done == len(batch.items):
        batch.finished_at = now
