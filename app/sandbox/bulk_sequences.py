"""`POST /batches/actions/prospectsAddToSequence`: a batch enrolling prospects, one item each.

Attributes `ids`, `sequenceId`, `mailboxId` (ids may come as `actionParams[filter][id]`
instead). The sequence and mailbox are checked when the batch is created; each record then
goes through the same ruleset gates as `POST /sequenceStates`, its refusal in the item's `info`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.sandbox.batches import ADD_TO_SEQUENCE
from app.sandbox.bulk_api import (
    batch_fault,
    batch_response,
    bulk_action,
    bulk_attributes,
    create_cost,
    parse_ids,
    skips_confirmation,
)
from app.sandbox.enrolment import resolve_mailbox
from app.sandbox.errors import bad_request, not_found
from app.sandbox.pipeline import Call, serve


async def add_to_sequence(request: web.Request) -> web.StreamResponse:
    """A Batch resource, processed asynchronously like a bulk modification."""
    return await serve(
        request, bulk_action(_create), scope="sequenceStates.write", cost=create_cost
    )


def _create(call: Call) -> web.Response:
    sandbox = call.sandbox
    document = call.document
    ids = parse_ids(call.query, document, sandbox.config.bulk_max_ids)
    attributes = bulk_attributes(document) or {}
    sequence_id = _positive(attributes, "sequenceId")
    if sequence_id not in sandbox.sequences.sequences:
        raise not_found(str(sequence_id), "sequence")
    raw_mailbox = attributes.get("mailboxId")
    mailbox_id = None if raw_mailbox is None else _positive(attributes, "mailboxId")
    mailbox = resolve_mailbox(sandbox.sequences, mailbox_id, call.user, sandbox.config)
    batch = sandbox.batches.create(
        {"sequenceId": sequence_id, "mailboxId": mailbox.id},
        ids,
        now=sandbox.clock(),
        fault=batch_fault(sandbox.config),
        confirmed=skips_confirmation(call),
        action=ADD_TO_SEQUENCE,
    )
    return batch_response(batch)


def _positive(attributes: dict[str, Any], name: str) -> int:
    value = attributes.get(name)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer id.", f"/data/attributes/{name}")
    return value
