"""A stored prospect as Outreach shows it in lists and create answers."""

from __future__ import annotations

from typing import Any

from app.sandbox.state import SandboxState
from app.sandbox.timestamps import iso


def prospect_resource(
    state: SandboxState, prospect_id: int, fields: frozenset[str] | None = None
) -> dict[str, Any]:
    """Its attributes with `createdAt` and `updatedAt`; only `fields` when a sparse
    fieldset (`fields[prospect]=…`) names them."""
    directory = state.directory
    attributes = {
        **state.prospects.get(prospect_id, {}),
        "createdAt": iso(directory.created.get(prospect_id)),
        "updatedAt": iso(directory.updated.get(prospect_id)),
    }
    if fields is not None:
        attributes = {k: v for k, v in attributes.items() if k in fields}
    return {"type": "prospect", "id": prospect_id, "attributes": attributes}
