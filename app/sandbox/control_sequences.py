"""Control API for sequences: define sequences, mailboxes and opt-outs; read every state."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from app.sandbox.context import SANDBOX_KEY
from app.sandbox.control import parse_body
from app.sandbox.sequences import Mailbox, SequenceDef, SequenceState
from app.sandbox.timestamps import iso


class _Sequences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sequences: list[SequenceDef]


class _Mailboxes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mailboxes: list[Mailbox]


class _OptedOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prospect_ids: list[int] = Field(min_length=1)


async def define_sequences(request: web.Request) -> web.Response:
    """`POST /_sandbox/sequences` `{"sequences": [{id, name, enabled, exclusive,
    permit_duplicate_prospects}]}`: add or replace; answers every sequence."""
    body = await parse_body(request, _Sequences)
    stored = request.app[SANDBOX_KEY].sequences.sequences
    stored.update({s.id: s for s in body.sequences})
    return web.json_response({"sequences": [s.model_dump() for s in stored.values()]})


async def define_mailboxes(request: web.Request) -> web.Response:
    """`POST /_sandbox/mailboxes` `{"mailboxes": [{id, user, email, default, can_send}]}`."""
    body = await parse_body(request, _Mailboxes)
    stored = request.app[SANDBOX_KEY].sequences.mailboxes
    stored.update({m.id: m for m in body.mailboxes})
    return web.json_response({"mailboxes": [m.model_dump() for m in stored.values()]})


async def opt_out(request: web.Request) -> web.Response:
    """`POST /_sandbox/opted-out` `{"prospect_ids": [...]}`: these prospects opted out."""
    body = await parse_body(request, _OptedOut)
    opted_out = request.app[SANDBOX_KEY].sequences.opted_out
    opted_out.update(body.prospect_ids)
    return web.json_response({"prospect_ids": sorted(opted_out)})


async def sequence_states(request: web.Request) -> web.Response:
    """`GET /_sandbox/sequence-states[?prospect_id=P][&sequence_id=S]`: every state, by id."""
    sandbox = request.app[SANDBOX_KEY]
    sandbox.advance()
    try:
        prospects = {int(v) for v in request.query.getall("prospect_id", [])} or None
        sequences = {int(v) for v in request.query.getall("sequence_id", [])} or None
    except ValueError:
        return web.json_response({"error": "ids must be integers"}, status=400)
    found = sandbox.sequences.find(prospect_ids=prospects, sequence_ids=sequences)
    return web.json_response({"states": [_flat(s) for s in found]})


def _flat(state: SequenceState) -> dict[str, object]:
    return {
        "id": state.id,
        "prospect_id": state.prospect_id,
        "sequence_id": state.sequence_id,
        "mailbox_id": state.mailbox_id,
        "state": state.state,
        "created_at": iso(state.created_at),
        "state_changed_at": iso(state.state_changed_at),
    }
