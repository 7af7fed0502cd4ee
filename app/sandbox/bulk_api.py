"""The Bulk API: `prospectsBulkModify`, batches and their items."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.sandbox.batches import Batch, BatchFault
from app.sandbox.config import SandboxConfig
from app.sandbox.errors import ApiError, bad_request, jsonapi_response
from app.sandbox.pipeline import Action, Call, serve

FILTER_IDS = "actionParams[filter][id]"
SKIP_CONFIRMATION = "actionParams[skipConfirmation]"
DEFAULT_PAGE_SIZE = 50
_SINGLE_FORMS = (("fieldName", "fieldValue"), ("field", "value"))


async def bulk_modify(request: web.Request) -> web.StreamResponse:
    """`POST /batches/actions/prospectsBulkModify`: the same attributes on the listed ids."""
    return await serve(request, bulk_action(_create), cost=create_cost)


async def get_batch(request: web.Request) -> web.StreamResponse:
    """`GET /batches/{id}`: the batch and its progress."""
    return await serve(request, bulk_action(lambda call: batch_response(_batch(call))))


async def cancel_batch(request: web.Request) -> web.StreamResponse:
    """`POST /batches/{id}/actions/cancel`: stop a batch; what is done stays done."""
    return await serve(request, bulk_action(_cancel))


async def confirm_batch(request: web.Request) -> web.StreamResponse:
    """`POST /batches/{id}/actions/confirm`: start a batch created without skipConfirmation."""
    return await serve(request, bulk_action(_confirm))


async def batch_items(request: web.Request) -> web.StreamResponse:
    """`GET /batchItems?filter[batch][id]=N`: one page of a batch's items."""
    return await serve(request, bulk_action(_items))


def bulk_action(action: Action) -> Action:
    """`action` under the configured `bulk_fault` (403, 404 or an unexpected answer)."""

    def faulty(call: Call) -> web.Response:
        fault = call.sandbox.config.bulk_fault
        if fault == "forbidden":
            detail = "The access token lacks the scopes batches.read and batches.write."
            raise ApiError(403, "forbidden", "Forbidden", detail)
        if fault == "not_found":
            raise ApiError(404, "resourceNotFound", "Not Found", "Unknown action.")
        response = action(call)
        if fault == "malformed":
            return jsonapi_response(200, {"meta": {"note": "not what the documentation says"}})
        return response

    return faulty


def batch_fault(config: SandboxConfig) -> BatchFault:
    """What becomes of a batch created now."""
    fault = config.bulk_fault
    return fault if fault in ("stick", "cancel") else "none"


def skips_confirmation(call: Call) -> bool:
    """Whether the call asked to start the batch at once."""
    return str(call.query.get(SKIP_CONFIRMATION, "")).lower() == "true"


def create_cost(call: Call) -> int:
    """What creating a batch charges: one request, or one per id (`bulk_cost`)."""
    config = call.sandbox.config
    ids = parse_ids(call.query, call.document, config.bulk_max_ids)
    return len(ids) if config.bulk_cost == "record" else 1


def _create(call: Call) -> web.Response:
    sandbox = call.sandbox
    document = call.document
    ids = parse_ids(call.query, document, sandbox.config.bulk_max_ids)
    batch = sandbox.batches.create(
        parse_modification(document),
        ids,
        now=sandbox.clock(),
        fault=batch_fault(sandbox.config),
        confirmed=skips_confirmation(call),
    )
    return batch_response(batch)


def parse_ids(query: Any, document: Any, max_ids: int) -> list[int]:
    """The ids a bulk call names, in the body's ``ids`` or the filter; never none at all
    (Outreach would modify every prospect), never more than ``max_ids``."""
    raw_filter = query.get(FILTER_IDS)
    attributes = bulk_attributes(document)
    in_body = attributes.get("ids") if attributes is not None else None
    if raw_filter is not None and in_body is not None:
        raise bad_request(
            "Give the ids in the body or in the filter, not both.", "/data/attributes/ids"
        )
    ids = _filter_ids(raw_filter) if raw_filter is not None else _body_ids(in_body)
    if not ids:
        detail = "A bulk modification must name the prospects' ids; refusing to modify all."
        raise bad_request(detail, "/data/attributes/ids")
    unique = list(dict.fromkeys(ids))
    if len(unique) > max_ids:
        raise ApiError(
            422,
            "validationError",
            "Validation Error",
            f"At most {max_ids} ids per bulk modification, got {len(unique)}.",
            "/data/attributes/ids",
        )
    return unique


def _filter_ids(raw: str) -> list[int]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise bad_request(f"{FILTER_IDS} must be a comma-separated list of integer ids.")
    return [int(p) for p in parts]


def _body_ids(raw: Any) -> list[int]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in raw
    ):
        raise bad_request("ids must be a list of positive integers.", "/data/attributes/ids")
    return list(raw)


def parse_modification(document: Any) -> dict[str, Any]:
    """The attributes to set: ``{field: value, ...}``, or one ``fieldName``/``fieldValue``
    (older copy: ``field``/``value``) pair."""
    attributes = bulk_attributes(document)
    if attributes is None:
        raise bad_request("The document must contain data.attributes.", "/data/attributes")
    rest = {k: v for k, v in attributes.items() if k != "ids"}
    for name_key, value_key in _SINGLE_FORMS:
        if name_key in rest:
            if set(rest) != {name_key, value_key} or not isinstance(rest[name_key], str):
                detail = f"'{name_key}' must be a string and come with '{value_key}' alone."
                raise bad_request(detail, f"/data/attributes/{name_key}")
            return {rest[name_key]: rest[value_key]}
    if not rest:
        raise bad_request("Nothing to modify.", "/data/attributes")
    return rest


def bulk_attributes(document: Any) -> dict[str, Any] | None:
    """`data.attributes` of a bulk call, if it is an object."""
    data = document.get("data") if isinstance(document, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    return attributes if isinstance(attributes, dict) else None


def _batch(call: Call) -> Batch:
    raw = call.request.match_info["id"]
    batch = call.sandbox.batches.batches.get(int(raw)) if raw.isascii() and raw.isdigit() else None
    if batch is None:
        detail = f"Could not find 'batch' with ID '{raw}'."
        raise ApiError(404, "resourceNotFound", "Resource Not Found", detail)
    return batch


def _cancel(call: Call) -> web.Response:
    batch = _batch(call)
    call.sandbox.batches.cancel(batch, call.sandbox.clock())
    return batch_response(batch)


def _confirm(call: Call) -> web.Response:
    batch = _batch(call)
    call.sandbox.batches.confirm(batch, call.sandbox.clock())
    return batch_response(batch)


def _items(call: Call) -> web.Response:
    query = call.request.query
    raw = query.get("filter[batch][id]", "")
    batch = call.sandbox.batches.batches.get(int(raw)) if raw.isdigit() else None
    if batch is None:
        raise bad_request("filter[batch][id] must name an existing batch.")
    size = _int_param(query, "page[size]", DEFAULT_PAGE_SIZE)
    offset = _int_param(query, "page[offset]", 0)
    size = min(max(size, 1), call.sandbox.config.bulk_page_size_max)
    page = batch.items[offset : offset + size]
    body: dict[str, Any] = {
        "data": [batch.item_json(item) for item in page],
        "meta": {"count": len(batch.items)},
        "links": {},
    }
    if offset + size < len(batch.items):
        url = call.request.url.update_query(
            {"page[offset]": str(offset + size), "page[size]": str(size)}
        )
        body["links"]["next"] = str(url)
    return jsonapi_response(200, body)


def _int_param(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise bad_request(f"{name} must be a non-negative integer.")
    return int(raw)


def batch_response(batch: Batch) -> web.Response:
    """The Batch resource as an answer."""
    return jsonapi_response(200, {"data": batch.to_json()})
