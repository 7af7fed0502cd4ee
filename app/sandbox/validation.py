"""Parsing and validating a prospect document (PATCH or POST)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from app.sandbox.attributes import check_name, check_typed, check_value
from app.sandbox.errors import JSONAPI, ApiError, bad_request, unsupported_media_type


def require_jsonapi(request: web.Request) -> None:
    """A 415 unless the body is declared JSON:API."""
    if request.content_type.lower() != JSONAPI:
        raise unsupported_media_type(request.headers.get("Content-Type", ""))


def decode_body(raw: bytes) -> Any:
    """The JSON document, or None if the body is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def attribute_names(document: Any) -> tuple[str, ...]:
    """Best-effort list of the attribute names a document sends, for the request log."""
    data = document.get("data") if isinstance(document, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    return tuple(attributes) if isinstance(attributes, dict) else ()


def parse_patch(document: Any, path_id: int, usable_custom_fields: int) -> dict[str, Any]:
    """The attributes to write; raises a 400 ApiError for a malformed document or name."""
    data = _data(document)
    doc_id = data.get("id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, int) or doc_id != path_id:
        detail = f"The resource id must be the integer {path_id} given in the URL."
        raise bad_request(detail, "/data/id")
    return _attributes(data.get("attributes"), usable_custom_fields)


def parse_create(document: Any, usable_custom_fields: int) -> dict[str, Any]:
    """The attributes of a new prospect (none required); a 400 as for a PATCH."""
    data = _data(document)
    if "id" in data:
        raise bad_request("A new resource must not carry an id.", "/data/id")
    return _attributes(data.get("attributes", {}), usable_custom_fields)


def _data(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise bad_request("The request body must be a JSON object.", "")
    data = document.get("data")
    if not isinstance(data, dict):
        raise bad_request("The document must contain a 'data' object.", "/data")
    if data.get("type") != "prospect":
        raise bad_request("The resource type must be 'prospect'.", "/data/type")
    return data


def _attributes(attributes: Any, usable_custom_fields: int) -> dict[str, Any]:
    if not isinstance(attributes, dict):
        raise bad_request("The resource must contain an 'attributes' object.", "/data/attributes")
    for name in attributes:
        error = check_name(name, usable_custom_fields)
        if error is not None:
            raise error
    return attributes


def check_values(attributes: dict[str, Any], types: Mapping[int, str] | None = None) -> None:
    """Raise a 422 ApiError for the first rejected value (``types``: the account's custom
    fields that are not text)."""
    for name, value in attributes.items():
        error: ApiError | None = check_value(name, value) or check_typed(name, value, types or {})
        if error is not None:
            raise error
