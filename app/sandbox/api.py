"""The prospects API (`/api/v2/prospects/{id}`): faults, auth, quota, then validation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.sandbox.attributes import custom_field_types
from app.sandbox.context import SANDBOX_KEY, Sandbox
from app.sandbox.errors import (
    JSONAPI,
    ApiError,
    jsonapi_response,
    not_found,
    unauthorized,
    unsupported_media_type,
)
from app.sandbox.quota import QuotaDecision
from app.sandbox.ratelimit import rate_limit_exceeded, ratelimit_headers
from app.sandbox.state import DROPPED, RequestRecord
from app.sandbox.validation import attribute_names, check_values, decode_body, parse_patch


@dataclass(slots=True)
class _Exchange:
    sandbox: Sandbox
    request: web.Request
    raw_id: str
    prospect_id: int | None
    document: Any = None
    attributes: tuple[str, ...] = ()
    user: str | None = None


_Action = Callable[[_Exchange], web.Response]


async def patch_prospect(request: web.Request) -> web.StreamResponse:
    """`PATCH /api/v2/prospects/{id}`: merge attributes into a prospect."""
    return await _serve(_exchange(request), _patch)


async def get_prospect(request: web.Request) -> web.StreamResponse:
    """`GET /api/v2/prospects/{id}`: the stored attributes of a prospect."""
    return await _serve(_exchange(request), _get)


async def list_types(request: web.Request) -> web.StreamResponse:
    """`GET /api/v2/types`: the account's custom prospect fields and their types."""
    return await _serve(_Exchange(request.app[SANDBOX_KEY], request, "", None), _types)


def _exchange(request: web.Request) -> _Exchange:
    raw_id = request.match_info["id"]
    prospect_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None
    return _Exchange(request.app[SANDBOX_KEY], request, raw_id, prospect_id)


async def _serve(ex: _Exchange, action: _Action) -> web.StreamResponse:
    faults, config = ex.sandbox.faults, ex.sandbox.config
    if faults.drop(config):
        return _drop(ex)
    delay = faults.latency_s(config)
    if delay > 0:
        await asyncio.sleep(delay)
    if ex.request.method == "PATCH":
        ex.document = decode_body(await ex.request.read())
        ex.attributes = attribute_names(ex.document)
    response = _answer(ex, action)
    _log(ex, response.status)
    return response


def _drop(ex: _Exchange) -> web.Response:
    transport = ex.request.transport
    if transport is not None:
        transport.close()
    _log(ex, DROPPED)
    # aiohttp fails to write this to the closed transport and abandons the connection.
    return web.Response(status=204)


def _answer(ex: _Exchange, action: _Action) -> web.Response:
    sandbox = ex.sandbox
    ex.user = sandbox.tokens.user_for(_bearer(ex.request))
    if ex.user is None:
        return unauthorized().response()
    # Bulk records due before this request are written before it, as Outreach would have.
    sandbox.advance()
    decision = sandbox.quota.hit(ex.user)
    now = sandbox.clock()
    response = _admitted(ex, action, decision, now)
    limited = not decision.allowed
    response.headers.update(ratelimit_headers(sandbox.config, decision.status, now, limited))
    return response


def _admitted(ex: _Exchange, action: _Action, decision: QuotaDecision, now: float) -> web.Response:
    if not decision.allowed:
        return rate_limit_exceeded(decision.status).response()
    failure = ex.sandbox.faults.server_error(ex.sandbox.config, now)
    if failure is not None:
        return failure
    try:
        return action(ex)
    except ApiError as error:
        if not ex.sandbox.config.field_pointers:
            error.pointer = None
        return error.response()


def _patch(ex: _Exchange) -> web.Response:
    config = ex.sandbox.config
    if ex.request.content_type.lower() != JSONAPI:
        raise unsupported_media_type(ex.request.headers.get("Content-Type", ""))
    prospect_id = _path_id(ex)
    attributes = parse_patch(ex.document, prospect_id, config.usable_custom_fields)
    _require_existing(ex, prospect_id)
    check_values(attributes, dict(config.custom_field_types))
    stored = ex.sandbox.state.merge(prospect_id, attributes)
    return jsonapi_response(200, _resource(prospect_id, stored))


def _get(ex: _Exchange) -> web.Response:
    prospect_id = _path_id(ex)
    _require_existing(ex, prospect_id)
    stored = ex.sandbox.state.prospects.get(prospect_id, {})
    return jsonapi_response(200, _resource(prospect_id, stored))


def _types(ex: _Exchange) -> web.Response:
    config = ex.sandbox.config
    types = dict(config.custom_field_types)
    return jsonapi_response(200, custom_field_types(config.usable_custom_fields, types))


def _path_id(ex: _Exchange) -> int:
    if ex.prospect_id is None:
        raise not_found(ex.raw_id)
    return ex.prospect_id


def _require_existing(ex: _Exchange, prospect_id: int) -> None:
    low, high = ex.sandbox.config.prospect_ids
    if not low <= prospect_id <= high:
        raise not_found(ex.raw_id)


def _resource(prospect_id: int, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"type": "prospect", "id": prospect_id, "attributes": dict(attributes)}}


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _log(ex: _Exchange, status: int) -> None:
    entry = RequestRecord(
        time=ex.sandbox.clock(),
        method=ex.request.method,
        path=ex.request.path,
        user=ex.user,
        status=status,
        prospect_id=ex.prospect_id,
        attributes=ex.attributes,
    )
    ex.sandbox.state.record(entry)
