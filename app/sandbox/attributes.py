"""The writable prospect attributes and the checks Outreach applies to them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.sandbox.config import MAX_CUSTOM_FIELDS
from app.sandbox.errors import ApiError, bad_request, validation_error

CUSTOM_MAX_CHARS = 32_000
DEFAULT_MAX_CHARS = 255

_LONG_STRINGS = {
    "personalNote1": 65_535,
    "personalNote2": 65_535,
    "linkedInUrl": 1000,
    "githubUrl": 1000,
}
_SHORT_STRINGS = (
    "firstName",
    "lastName",
    "middleName",
    "nickname",
    "occupation",
    "title",
    "company",
    "addressCity",
    "addressState",
    "addressCountry",
    "addressStreet",
    "addressZip",
    "githubUsername",
    "externalId",
    "externalSource",
)
STRING_LIMITS: dict[str, int] = {name: DEFAULT_MAX_CHARS for name in _SHORT_STRINGS}
STRING_LIMITS.update(_LONG_STRINGS)
ARRAYS = frozenset({"emails", "mobilePhones", "homePhones", "otherPhones", "tags"})
BOOLEANS = frozenset({"optedOut", "emailOptedOut"})
NUMBERS = frozenset({"score"})
READ_ONLY = frozenset({"name"})

_CUSTOM = re.compile(r"custom([1-9][0-9]{0,2})")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def custom_index(name: str) -> int | None:
    """N for a name `customN` with N in 1..150, else None."""
    match = _CUSTOM.fullmatch(name)
    if match is None:
        return None
    index = int(match.group(1))
    return index if index <= MAX_CUSTOM_FIELDS else None


def pointer(name: str) -> str:
    """The JSON pointer of an attribute in a request body."""
    return f"/data/attributes/{name}"


def check_name(name: str, usable_custom_fields: int) -> ApiError | None:
    """A 400 if the attribute cannot be written on this account."""
    if name in READ_ONLY:
        return bad_request(f"Attribute '{name}' is read-only.", pointer(name))
    index = custom_index(name)
    if index is not None:
        if index > usable_custom_fields:
            detail = f"Custom field '{name}' is not usable on this account."
            return bad_request(detail, pointer(name))
        return None
    if name in STRING_LIMITS or name in ARRAYS or name in BOOLEANS or name in NUMBERS:
        return None
    return bad_request(f"Unknown attribute '{name}' for type 'prospect'.", pointer(name))


def check_value(name: str, value: Any) -> ApiError | None:
    """A 422 if the value is not acceptable for a (known, writable) attribute."""
    if value is None:
        return None
    if custom_index(name) is not None:
        return _check_string(name, value, CUSTOM_MAX_CHARS)
    if name in STRING_LIMITS:
        return _check_string(name, value, STRING_LIMITS[name])
    if name in BOOLEANS and not isinstance(value, bool):
        return validation_error(f"{name} must be a boolean.", pointer(name))
    if name in NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
        return validation_error(f"{name} must be a number.", pointer(name))
    if name in ARRAYS and not _is_string_list(value):
        return validation_error(f"{name} must be an array of strings.", pointer(name))
    return None


def _check_string(name: str, value: Any, max_chars: int) -> ApiError | None:
    if not isinstance(value, str):
        return validation_error(f"{name} must be a string or null.", pointer(name))
    if len(value) > max_chars:
        detail = f"{name} is too long (maximum is {max_chars} characters)."
        return validation_error(detail, pointer(name))
    return None


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_typed(name: str, value: Any, types: Mapping[int, str]) -> ApiError | None:
    """A 422 if a custom field the account typed "number" or "date" gets another value."""
    index = custom_index(name)
    kind = None if index is None else types.get(index, "text")
    if value is None or kind in (None, "text"):
        return None
    text = str(value)
    ok = _NUMBER.fullmatch(text) if kind == "number" else _DATE.fullmatch(text)
    if ok:
        return None
    return validation_error(f"{name} must be a {kind}.", pointer(name))


def custom_field_types(usable: int, types: Mapping[int, str]) -> dict[str, Any]:
    """`GET /types`: the account's custom prospect fields with their validation types."""
    rows = [
        {
            "type": "type",
            "id": f"prospect.custom{n}",
            "attributes": {
                "resourceType": "prospect",
                "fieldName": f"custom{n}",
                "label": f"Custom {n}",
                "validationType": types.get(n, "text"),
                "maxLength": CUSTOM_MAX_CHARS,
                "readOnly": False,
            },
        }
        for n in range(1, usable + 1)
    ]
    return {"data": rows, "meta": {"count": len(rows)}}
