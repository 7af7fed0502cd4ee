"""What an Outreach account says about itself, read for ``connections check``: its custom
prospect fields (``GET /types``), a prospect's current values, and the rate-limit headers an
answer carries. Pure parsing, no I/O.

The shape of ``GET /types`` is not documented beyond "the custom fields with their
validation types": every plausible spelling of a field's name, type and writability is
accepted, and a document none of them fits raises ``ValueError`` (the check then says so
rather than guessing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.outreach.fields import custom_field, is_writable

TYPES = "/types"
#: Field types a status string ("realized", "exited") or an attribute's text can be stored in.
TEXT_TYPES = frozenset(
    {"text", "string", "str", "textarea", "text_area", "long_text", "longtext", "free_text"}
)
#: Header names that carry rate-limit signals, in any spelling seen in the wild.
RATE_HEADER_MARKS = ("ratelimit", "rate-limit", "retry-after")
_NAME_KEYS = ("fieldName", "name", "field", "attribute", "apiName", "key")
_TYPE_KEYS = ("validationType", "dataType", "fieldType", "type", "kind")
_RESOURCE_KEYS = ("resourceType", "resource", "objectType", "modelType")


@dataclass(frozen=True, slots=True)
class CustomFieldType:
    """One custom prospect field configured on the account; ``data_type`` None: not said."""

    name: str
    data_type: str | None
    read_only: bool
    label: str | None = None

    @property
    def holds_text(self) -> bool | None:
        """Whether text can be written to it (None: the account did not say its type)."""
        if self.data_type is None:
            return None
        return self.data_type.lower() in TEXT_TYPES


def parse_types(doc: Any) -> dict[str, CustomFieldType]:
    """The prospect custom fields of a ``GET /types`` document, by name (``customN``)."""
    rows = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise ValueError("no 'data' list")
    found: dict[str, CustomFieldType] = {}
    for row in rows:
        field = _field(row)
        if field is not None:
            found[field.name] = field
    if rows and not found:
        raise ValueError(f"none of its {len(rows)} entries names a customN field")
    return found


def _field(row: Any) -> CustomFieldType | None:
    if not isinstance(row, dict):
        return None
    attrs = row.get("attributes")
    attrs = attrs if isinstance(attrs, dict) else {}
    resource = _first(attrs, _RESOURCE_KEYS)
    if resource is not None and resource.lower() != "prospect":
        return None
    name = _first(attrs, _NAME_KEYS) or str(row.get("id") or "")
    name = name.rsplit(".", 1)[-1]  # "prospect.custom4"
    if not name.startswith("custom") or not is_writable(name):
        return None
    writable = attrs.get("writable", attrs.get("editable"))
    read_only = bool(attrs.get("readOnly")) or writable is False
    label = attrs.get("label") or attrs.get("displayName")
    return CustomFieldType(
        name, _first(attrs, _TYPE_KEYS), read_only, None if label is None else str(label)
    )


def _first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def prospect_values(doc: Any, prospect: int) -> dict[str, Any]:
    """The attributes of a ``GET /prospects/{id}`` document; ValueError for another shape."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or str(data.get("id")) != str(prospect):
        raise ValueError(f"not prospect {prospect}")
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise ValueError("no attributes")
    return attrs


def rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an answer that look like rate-limit signals, as sent."""
    return {k: v for k, v in headers.items() if any(m in k.lower() for m in RATE_HEADER_MARKS)}


def custom_fields_of(mapping_ids: set[int], targets: set[str]) -> set[str]:
    """The ``customN`` fields written: one per mapping ID, and custom attribute targets."""
    return {custom_field(n) for n in mapping_ids} | {t for t in targets if t.startswith("custom")}
