"""The JSON:API body of one prospect update."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

JSONAPI = "application/vnd.api+json"


def prospect_patch(prospect: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``PATCH /prospects/{id}`` body: every pending field of the prospect in one request."""
    return {"data": {"type": "prospect", "id": prospect, "attributes": dict(fields)}}


def prospect_patch_bytes(prospect: int, fields: Mapping[str, Any]) -> bytes:
    return json.dumps(prospect_patch(prospect, fields), separators=(",", ":")).encode()


def prospect_create_bytes(email: str, fields: Mapping[str, Any]) -> bytes:
    """``POST /prospects`` body: a new prospect with its email and every pending field, so
    one request creates it complete (no PATCH after it)."""
    attributes = {**fields, "emails": [email]}
    doc = {"data": {"type": "prospect", "attributes": attributes}}
    return json.dumps(doc, separators=(",", ":")).encode()
