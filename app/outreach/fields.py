"""The writable attributes of an Outreach prospect, as data, and their value checks.

Source: Outreach REST API v2 (see the project's reference notes). ``name`` is read-only and
therefore absent. ``None`` is accepted for every attribute: it clears the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

FieldKind = Literal["string", "number", "bool", "string_list"]

#: Mapping IDs (the N of ``customN``) Outreach offers.
CUSTOM_MIN = 1
CUSTOM_MAX = 150
CUSTOM_MAX_LENGTH = 32_000


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What one writable prospect attribute accepts."""

    kind: FieldKind
    max_length: int | None = None


def _strings(max_length: int, *names: str) -> dict[str, FieldSpec]:
    return {name: FieldSpec("string", max_length) for name in names}


def _build() -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {
        f"custom{n}": FieldSpec("string", CUSTOM_MAX_LENGTH)
        for n in range(CUSTOM_MIN, CUSTOM_MAX + 1)
    }
    fields |= _strings(
        255,
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
    fields |= _strings(1000, "linkedInUrl", "githubUrl")
    fields |= _strings(65_535, "personalNote1", "personalNote2")
    fields["score"] = FieldSpec("number")
    fields |= {name: FieldSpec("bool") for name in ("optedOut", "emailOptedOut")}
    fields |= {
        name: FieldSpec("string_list")
        for name in ("emails", "mobilePhones", "homePhones", "otherPhones", "tags")
    }
    return fields


#: Every writable prospect attribute by name.
FIELDS: Mapping[str, FieldSpec] = MappingProxyType(_build())


def is_writable(name: str) -> bool:
    """Whether ``name`` is a prospect attribute this service may write."""
    return name in FIELDS


def custom_field(mapping_id: int) -> str:
    """The prospect attribute named by a Mapping ID: ``7`` -> ``"custom7"``."""
    if isinstance(mapping_id, bool) or not CUSTOM_MIN <= mapping_id <= CUSTOM_MAX:
        raise ValueError(f"mapping ID {mapping_id!r} is outside {CUSTOM_MIN}–{CUSTOM_MAX}")  # noqa: RUF001 - en dash as in the docs
    return f"custom{mapping_id}"


def check_value(name: str, value: object) -> str | None:
    """``None`` if ``value`` may be written to attribute ``name``, else the reason why not."""
    spec = FIELDS.get(name)
    if spec is None:
        return f"{name!r} is not a writable Outreach prospect attribute"
    if value is None:
        return None
    if spec.kind == "string":
        return _check_string(value, spec.max_length)
    if spec.kind == "number":
        # bool is an int subclass, but True is not a score.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        try:
            finite = math.isfinite(value)  # an integer beyond a double's range overflows
        except OverflowError:
            finite = False
        return None if finite else "must be a finite number"
    if spec.kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    return _check_string_list(value)


def _check_string(value: object, max_length: int | None) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if max_length is not None and len(value) > max_length:
        return f"longer than {max_length} characters"
    return _check_unicode(value)


def _check_string_list(value: object) -> str | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return "must be a list of strings"
    return next(filter(None, map(_check_unicode, value)), None)


def _check_unicode(text: str) -> str | None:
    """JSON can carry a lone UTF-16 surrogate (a string cut in the middle of an emoji); no
    UTF-8 can, so it would fail later, in the merge, and take the whole batch down with it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (it contains a lone surrogate)"
    return None
