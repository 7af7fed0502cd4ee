"""Bulk modification batches: created at once, worked through later at a configured speed.

Processing is lazy: whoever looks (a batch read, the control API) first ``advance``s every
batch to what the clock says it has done, so a run replays the same whatever the polling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from app.sandbox.attributes import check_name, check_value

#: What the sandbox does with the batches created while it is set.
BatchFault = Literal["none", "stick", "cancel"]


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
    """One bulk modification: the same attributes for every listed prospect."""

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
                "action": "prospectsBulkModify",
                "state": self.state,
                "total": total,
                "pending": total - self.done,
                "failures": self.failures,
                "summary": f"{self.done - self.failures} modified, {self.failures} failed",
                "confirmCount": total,
                "confirmedCountRequired": not self.confirmed,
                "createdAt": _iso(self.created_at),
                "startedAt": _iso(self.started_at),
                "finishedAt": _iso(self.finished_at),
                "canceledAt": _iso(self.canceled_at),
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
    ) -> Batch:
        """A new batch over ``ids`` (validated by the caller: never empty)."""
        items = [Item(self.next_item + i, pid) for i, pid in enumerate(ids)]
        self.next_item += len(items)
        batch = Batch(len(self.batches) + 1, dict(attributes), items, now, fault, confirmed)
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

    def advance(self, now: float, apply: Apply) -> None:
        """Work every running batch through to where ``records_per_s`` says it is by now."""
        for batch in self.batches.values():
            _advance(batch, now, apply)


class Apply:
    """Writes one record: the sandbox's prospects, its speed and which prospects exist."""

    def __init__(
        self,
        prospects: dict[int, dict[str, Any]],
        *,
        records_per_s: float,
        prospect_ids: tuple[int, int],
        usable_custom_fields: int,
    ) -> None:
        self.prospects = prospects
        self.records_per_s = records_per_s
        self.prospect_ids = prospect_ids
        self.usable_custom_fields = usable_custom_fields
        self.records = 0

    def __call__(self, prospect_id: int, attributes: dict[str, Any]) -> str | None:
        """Write one prospect; the reason (Outreach's ``info``) when it cannot be."""
        for name, value in attributes.items():
            error = check_name(name, self.usable_custom_fields) or check_value(name, value)
            if error is not None:
                return error.detail
        low, high = self.prospect_ids
        if not low <= prospect_id <= high:
            return f"Could not find 'prospect' with ID '{prospect_id}'."
        self.prospects.setdefault(prospect_id, {}).update(attributes)
        self.records += 1
        return None


def _advance(batch: Batch, now: float, apply: Apply) -> None:
    if batch.started_at is None or batch.finished_at or batch.canceled_at:
        return
    if batch.fault == "cancel":
        batch.canceled_at = now
        return
    if batch.fault == "stick":
        return
    target = min(len(batch.items), int((now - batch.started_at) * apply.records_per_s))
    for item in batch.items[batch.done : target]:
        info = apply(item.prospect_id, batch.attributes)
        item.state, item.failed, item.info = (
            ("failed", True, info) if info else ("done", False, None)
        )
        batch.failures += bool(info)
    batch.done = max(batch.done, target)
    if batch.done == len(batch.items):
        batch.finished_at = now


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
