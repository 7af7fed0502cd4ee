"""Sequences, sequence states, mailboxes and users, as Outreach serves them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.sandbox.enrolment import enroll
from app.sandbox.errors import bad_request, jsonapi_response, not_found
from app.sandbox.lookup import id_filter
from app.sandbox.paging import list_body, paginate, wants_count
from app.sandbox.pipeline import Call, serve
from app.sandbox.sequences import TRANSITIONS, Mailbox, SequenceDef, SequenceState
from app.sandbox.validation import require_jsonapi

STATES_READ, STATES_WRITE = "sequenceStates.read", "sequenceStates.write"


async def get_sequence(request: web.Request) -> web.StreamResponse:
    """`GET /sequences/{id}` (`include=ruleset` adds the ruleset)."""
    return await serve(request, _get_sequence, scope="sequences.read")


async def list_mailboxes(request: web.Request) -> web.StreamResponse:
    """`GET /mailboxes?filter[userId]=U` (also `filter[id]`), cursor-paged."""
    return await serve(request, _list_mailboxes, scope="mailboxes.read")


async def get_user(request: web.Request) -> web.StreamResponse:
    """`GET /users/{id}` (`include=mailbox` adds the default mailbox)."""
    return await serve(request, _get_user, scope="users.read")


async def create_state(request: web.Request) -> web.StreamResponse:
    """`POST /sequenceStates`: enroll a prospect (201), or the ruleset's 422."""
    return await serve(request, _create_state, scope=STATES_WRITE)


async def list_states(request: web.Request) -> web.StreamResponse:
    """`GET /sequenceStates?filter[prospect][id]=P&filter[sequence][id]=S` (ANDed), paged."""
    return await serve(request, _list_states, scope=STATES_READ)


async def state_action(request: web.Request) -> web.StreamResponse:
    """`POST /sequenceStates/{id}/actions/finish|pause|resume`: 200, or 422 if it does not
    apply to the state."""
    return await serve(request, _state_action, scope=STATES_WRITE)


async def delete_state(request: web.Request) -> web.StreamResponse:
    """`DELETE /sequenceStates/{id}`: 204."""
    return await serve(request, _delete_state, scope=STATES_WRITE)


def _get_sequence(call: Call) -> web.Response:
    sequence = call.sandbox.sequences.sequences.get(_path_int(call, "id", "sequence"))
    if sequence is None:
        raise not_found(call.request.match_info["id"], "sequence")
    body: dict[str, Any] = {"data": sequence_resource(sequence)}
    if "ruleset" in _includes(call):
        body["included"] = [_ruleset(sequence)]
    return jsonapi_response(200, body)


def _list_mailboxes(call: Call) -> web.Response:
    users = _values(call.query.get("filter[userId]"))
    ids = id_filter(call.query)
    found = [
        m
        for _, m in sorted(call.sandbox.sequences.mailboxes.items())
        if (users is None or m.user in users) and (ids is None or m.id in ids)
    ]
    return _page(call, found, lambda m: m.id, mailbox_resource)


def _get_user(call: Call) -> web.Response:
    user = call.request.match_info["id"]
    sequences = call.sandbox.sequences
    if not any(m.user == user for m in sequences.mailboxes.values()):
        raise not_found(user, "user")
    mailbox = sequences.default_mailbox(user)
    linkage = None if mailbox is None else {"type": "mailbox", "id": mailbox.id}
    data = {
        "type": "user",
        "id": _json_id(user),
        "attributes": {"email": None if mailbox is None else mailbox.email},
        "relationships": {"mailbox": {"data": linkage}},
    }
    body: dict[str, Any] = {"data": data}
    if "mailbox" in _includes(call):
        body["included"] = [] if mailbox is None else [mailbox_resource(mailbox)]
    return jsonapi_response(200, body)


def _create_state(call: Call) -> web.Response:
    sandbox = call.sandbox
    require_jsonapi(call.request)
    prospect_id, sequence_id, mailbox_id = parse_enrolment(call.document)
    call.prospect_id = prospect_id
    created = enroll(
        sandbox.sequences,
        prospect=sandbox.prospect(prospect_id),
        prospect_id=prospect_id,
        sequence_id=sequence_id,
        mailbox_id=mailbox_id,
        user=call.user,
        config=sandbox.config,
        now=sandbox.clock(),
    )
    return jsonapi_response(201, {"data": created.to_json()})


def _list_states(call: Call) -> web.Response:
    prospects = _values(call.query.get("filter[prospect][id]"), integers=True)
    sequences = _values(call.query.get("filter[sequence][id]"), integers=True)
    found = call.sandbox.sequences.find(
        prospect_ids=None if prospects is None else {int(p) for p in prospects},
        sequence_ids=None if sequences is None else {int(s) for s in sequences},
    )
    wanted = _values(call.query.get("filter[state]"))
    found = [s for s in found if wanted is None or s.state in wanted]
    return _page(call, found, lambda s: s.id, SequenceState.to_json)


def _state_action(call: Call) -> web.Response:
    action = call.request.match_info["action"]
    if action not in TRANSITIONS:
        raise not_found(action, "action")
    found = _state(call)
    call.sandbox.sequences.act(found, action, call.sandbox.clock())
    return jsonapi_response(200, {"data": found.to_json()})


def _delete_state(call: Call) -> web.Response:
    found = _state(call)
    del call.sandbox.sequences.states[found.id]
    return web.Response(status=204)


def _state(call: Call) -> SequenceState:
    found = call.sandbox.sequences.states.get(_path_int(call, "id", "sequenceState"))
    if found is None:
        raise not_found(call.request.match_info["id"], "sequenceState")
    call.prospect_id = found.prospect_id
    return found


def parse_enrolment(document: Any) -> tuple[int, int, int | None]:
    """Prospect, sequence and mailbox ids of a sequenceState document (a 400 naming the
    relationship when one is malformed; the mailbox may be absent)."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict) or data.get("type") != "sequenceState":
        raise bad_request("The document must contain a 'sequenceState' resource.", "/data")
    links = data.get("relationships")
    if not isinstance(links, dict):
        raise bad_request("The resource must have relationships.", "/data/relationships")
    prospect = _linked(links, "prospect")
    sequence = _linked(links, "sequence")
    mailbox = _linked(links, "mailbox") if links.get("mailbox") is not None else None
    return prospect, sequence, mailbox


def _linked(links: dict[str, Any], name: str) -> int:
    pointer = f"/data/relationships/{name}"
    link = links.get(name)
    data = link.get("data") if isinstance(link, dict) else None
    if not isinstance(data, dict) or data.get("type") != name:
        raise bad_request(f"The relationship '{name}' must link a '{name}'.", pointer)
    raw = data.get("id")
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise bad_request(f"The '{name}' id must be a positive integer.", f"{pointer}/data/id")
    return raw


def sequence_resource(sequence: SequenceDef) -> dict[str, Any]:
    """The sequence resource."""
    return {
        "type": "sequence",
        "id": sequence.id,
        "attributes": {"name": sequence.name, "enabled": sequence.enabled},
        "relationships": {"ruleset": {"data": {"type": "ruleset", "id": sequence.id}}},
    }


def _ruleset(sequence: SequenceDef) -> dict[str, Any]:
    exclusivity = "exclusive" if sequence.exclusive else "none"
    return {
        "type": "ruleset",
        "id": sequence.id,
        "attributes": {
            "permitDuplicateProspects": sequence.permit_duplicate_prospects,
            "sequenceExclusivity": exclusivity,
        },
    }


def mailbox_resource(mailbox: Mailbox) -> dict[str, Any]:
    """The mailbox resource; `sendDisabled` marks one that cannot send."""
    return {
        "type": "mailbox",
        "id": mailbox.id,
        "attributes": {
            "email": mailbox.email,
            "userId": _json_id(mailbox.user),
            "sendDisabled": not mailbox.can_send,
        },
        "relationships": {"user": {"data": {"type": "user", "id": _json_id(mailbox.user)}}},
    }


def _page(call: Call, items: list[Any], key: Any, render: Any) -> web.Response:
    page, next_url = paginate(items, key, call.request, call.sandbox.config)
    count = len(items) if wants_count(call.query) else None
    return jsonapi_response(200, list_body([render(i) for i in page], next_url, count))


def _values(raw: str | None, *, integers: bool = False) -> set[str] | None:
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",") if v.strip()}
    if integers and not all(v.isascii() and v.isdigit() for v in values):
        raise bad_request("An id filter must be a comma-separated list of integer ids.")
    return values


def _includes(call: Call) -> set[str]:
    return {name.strip() for name in call.query.get("include", "").split(",")}


def _path_int(call: Call, name: str, kind: str) -> int:
    raw = call.request.match_info[name]
    if not (raw.isascii() and raw.isdigit()):
        raise not_found(raw, kind)
    return int(raw)


def _json_id(user: str) -> int | str:
    return int(user) if user.isascii() and user.isdigit() else user
