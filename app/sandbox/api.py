"""One prospect (`PATCH` and `GET /api/v2/prospects/{id}`) and the account's fields
(`GET /api/v2/types`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.sandbox.attributes import custom_field_types
from app.sandbox.errors import jsonapi_response, not_found
from app.sandbox.pipeline import Call, serve
from app.sandbox.validation import check_values, parse_patch, require_jsonapi


async def patch_prospect(request: web.Request) -> web.StreamResponse:
    """`PATCH /api/v2/prospects/{id}`: merge attributes into a prospect."""
    return await serve(
        request, _patch, scope="prospects.write", prospect_id=_path_id(request), log_attributes=True
    )


async def get_prospect(request: web.Request) -> web.StreamResponse:
    """`GET /api/v2/prospects/{id}`: the stored attributes of a prospect."""
    return await serve(request, _get, scope="prospects.read", prospect_id=_path_id(request))


async def list_types(request: web.Request) -> web.StreamResponse:
    """`GET /api/v2/types`: the account's custom prospect fields and their types."""
    return await serve(request, _types)


def _path_id(request: web.Request) -> int | None:
    raw_id = request.match_info["id"]
    return int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None


def _patch(call: Call) -> web.Response:
    sandbox = call.sandbox
    require_jsonapi(call.request)
    if call.prospect_id is None:
        raise not_found(call.request.match_info["id"])
    attributes = parse_patch(call.document, call.prospect_id, sandbox.config.usable_custom_fields)
    prospect_id = _existing(call)
    check_values(attributes, dict(sandbox.config.custom_field_types))
    stored = sandbox.state.merge(prospect_id, attributes, now=sandbox.clock())
    return jsonapi_response(200, _resource(prospect_id, stored))


def _get(call: Call) -> web.Response:
    prospect_id = _existing(call)
    state = call.sandbox.state
    doc = _resource(prospect_id, state.prospects.get(prospect_id, {}))
    owner = state.owners.get(prospect_id)
    if owner is not None:
        user = int(owner) if owner.isdigit() else owner
        doc["data"]["relationships"] = {"owner": {"data": {"type": "user", "id": user}}}
    return jsonapi_response(200, doc)


def _types(call: Call) -> web.Response:
    config = call.sandbox.config
    types = dict(config.custom_field_types)
    return jsonapi_response(200, custom_field_types(config.usable_custom_fields, types))


def _existing(call: Call) -> int:
    if call.prospect_id is None or not call.sandbox.prospect_exists(call.prospect_id):
        raise not_found(call.request.match_info["id"])
    return call.prospect_id


def _resource(prospect_id: int, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"type": "prospect", "id": prospect_id, "attributes": dict(attributes)}}
