"""Validation of one platform profile and the prospect field changes it asks for.

``evaluate_profile`` never raises for JSON input: every profile ends as accepted, excluded
(no usable prospect id) or rejected (malformed; the reason names the field).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from app.config.destinations import (
    EMAIL_NAMESPACES,
    HASHED_EMAIL_NAMESPACES,
    STATUSES,
    Destination,
    Status,
    describe_error,
    format_loc,
)
from app.outreach import fields as outreach_fields

JSONValue = str | int | float | bool | None | list[str]
Outcome = Literal["accepted", "excluded", "rejected"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_MAX_ID_DIGITS = 19  # int() of a longer string is slow or refused; Outreach ids are far shorter
_MAX_ID = 2**63 - 1  # Outreach ids are 64-bit integers (far smaller in practice)
#: An integer time below this (March 1973 in milliseconds) is epoch seconds sent by mistake:
#: read as milliseconds it would date the change to January 1970, and it would then lose to
#: every later update of its field, silently.
_MIN_EPOCH_MS = 100_000_000_000
_MAX_PROBLEMS = 5
_ABSENT: Any = object()


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One prospect attribute to set; ``ts_ms`` orders it against other versions."""

    field: str
    value: JSONValue
    ts_ms: int


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """What one profile of a request amounts to for one destination."""

    index: int
    outcome: Outcome
    reason: str | None
    prospect_ids: tuple[int, ...]
    changes: tuple[FieldChange, ...]
    ignored_audiences: int
    #: (mapping ID, status) per mapped audience the profile names, the newest evaluation's
    #: status when it is named twice; read even from a profile excluded or rejected, so
    #: those count per audience too. Bookkeeping for the counts: not part of equality.
    audiences: tuple[tuple[int, Status], ...] = dataclasses.field(default=(), compare=False)
    #: (attribute, reason) per attribute left out of the changes: a shape or a value that
    #: cannot be written. The profile's other changes, its audiences first, go ahead.
    attributes_rejected: tuple[tuple[str, str], ...] = ()
    #: Attributes carrying a value that no mapping of the destination reads.
    unmapped_attributes: tuple[str, ...] = ()
    #: Normalised emails (trimmed, lower-cased) of a profile known by email only: its
    #: changes wait under them until resolution finds (or creates) their prospects.
    emails: tuple[str, ...] = ()


def parse_time(value: object) -> int:
    """Milliseconds since the epoch from ISO 8601 (zone-less means UTC) or integer epoch ms."""
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
        if 0 <= ms < _MIN_EPOCH_MS:
            raise ValueError(
                f"{_short(value)} looks like epoch seconds: integer times are epoch "
                "milliseconds (or send ISO 8601)"
            )
    elif isinstance(value, str):
        ms = _parse_iso(value)
    else:
        raise ValueError(f"{_short(value)} is not an ISO 8601 time nor integer epoch milliseconds")
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"{_short(value)} is not between 1970 and 9999")
    return ms


@lru_cache(maxsize=4096)  # a segment job stamps many profiles with the same few times
def _parse_iso(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{_short(text)} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _short(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else f"{text[:57]}..."


def _optional_time(value: object) -> int | None:
    return None if value is None else parse_time(value)


def _known_status(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if value not in STATUSES:
        raise ValueError(f"{_short(value)} is not one of {', '.join(STATUSES)}")
    return value


Time = Annotated[int | None, BeforeValidator(_optional_time)]


class _Lenient(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="ignore", hide_input_in_errors=True, allow_inf_nan=False
    )


class _Membership(_Lenient):
    status: Annotated[Status, BeforeValidator(_known_status)]
    lastQualificationTime: Time = None


#: The most memberships a producer may say it left out of one profile (``unmappedAudiences``).
MAX_UNMAPPED_AUDIENCES = 1_000_000


def _count(value: object) -> object:
    if type(value) is not int or not 0 <= value <= MAX_UNMAPPED_AUDIENCES:
        raise ValueError(f"must be an integer from 0 to {MAX_UNMAPPED_AUDIENCES}")
    return value


UnmappedCount = Annotated[int, BeforeValidator(_count)]


class _Profile(_Lenient):
    identityMap: dict[str, Any] | None = None
    segmentMembership: dict[str, dict[str, _Membership]] | None = None
    attributes: dict[str, Any] | None = None
    timestamp: Time = None
    #: Memberships the producer left out for want of a mapping ID (AEP's template counts
    #: the audiences without an alias): counted as ignored, as if they had been sent.
    unmappedAudiences: UnmappedCount | None = None


class _Identity(_Lenient):
    id: Any


_IDENTITIES = TypeAdapter(list[_Identity])


@dataclass(slots=True)
class _Parsed:
    """A profile whose shape is known good; its identities are not checked yet."""

    ids: list[object]
    memberships: list[tuple[str, Status, int | None]]
    attributes: dict[str, Any]
    timestamp: int | None
    unmapped_audiences: int = 0


#: A producer's clock may run this far ahead of ours. A time further ahead (a bug, a typo'd
#: year) would otherwise win over every later update of the field forever, so it orders the
#: change as if it had been made on arrival instead; the value itself is kept.
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000


def _no_later_than(ts: int | None, received_ms: int) -> int | None:
    return received_ms if ts is not None and ts > received_ms + MAX_FUTURE_SKEW_MS else ts


def evaluate_profile(
    raw: object, destination: Destination, *, index: int, received_ms: int
) -> ProfileResult:
    """Validate one raw profile and derive the changes for ``destination``.

    Malformed input is rejected before a missing identity excludes: a broken producer
    should show up as failures, not hide among profiles that merely lack an id.
    """
    if not isinstance(raw, dict):
        return _result(index, "rejected", f"a profile must be an object, not {_json_type(raw)}")
    namespace = _namespace(raw, destination.match)
    hashed = _hashed_only(raw, namespace, destination.match)
    if hashed is not None:
        return _result(
            index, "rejected", hashed, _newest(_lenient_parse(raw), destination, received_ms)[0]
        )
    parsed = _fast_parse(raw, namespace)
    if parsed is None:
        parsed, problems = _full_parse(raw, namespace)
        if parsed is None:
            lenient = _lenient_parse(raw)
            newest, _ = _newest(lenient, destination, received_ms)
            return _result(index, "rejected", _join(problems), newest)
    newest, ignored = _newest(parsed, destination, received_ms)
    changes = _audience_changes(newest, destination)
    event_ms = _event_ms(parsed, received_ms)
    left_out = tuple(_attribute_changes(parsed.attributes, destination, event_ms, changes))
    unmapped = _unmapped_attributes(parsed.attributes, destination)
    if left_out and not changes:  # nothing usable: a broken producer, not a partial profile
        reason = _join([f"attributes.{name}: {why}" for name, why in left_out])
        return _result(index, "rejected", reason, newest)
    if namespace in EMAIL_NAMESPACES:
        emails, bad_emails = _emails(parsed.ids)
        if bad_emails and any(_HASHED.fullmatch(str(v).strip()) for v in bad_emails):
            reason = _join([_email_problem(namespace, v) for v in bad_emails])
            return _result(index, "rejected", reason, newest)
        if not emails:
            reasons = [_email_problem(namespace, v) for v in bad_emails]
            excluded = _result(index, "excluded", _join(reasons or [f"no {namespace}"]), newest)
            return dataclasses.replace(
                excluded, attributes_rejected=left_out, unmapped_attributes=unmapped
            )
        statuses = _statuses(newest)
        ignored += parsed.unmapped_audiences
        changes_t = tuple(changes.values())
        return ProfileResult(
            index, "accepted", None, (), changes_t, ignored, statuses, left_out, unmapped, emails
        )
    ids, bad = _prospect_ids(parsed.ids)
    if not ids:
        reasons = [f"{namespace} {_short(v)} is not a positive 64-bit integer" for v in bad]
        excluded = _result(index, "excluded", _join(reasons or [f"no {namespace}"]), newest)
        return dataclasses.replace(
            excluded, attributes_rejected=left_out, unmapped_attributes=unmapped
        )
    statuses = _statuses(newest)
    ignored += parsed.unmapped_audiences
    return ProfileResult(
        index, "accepted", None, ids, tuple(changes.values()), ignored, statuses, left_out, unmapped
    )


#: Per mapped audience field: (mapping ID, status, version ms) of its newest evaluation.
Newest = dict[str, tuple[int, Status, int]]


def _result(
    index: int, outcome: Outcome, reason: str, newest: Newest | None = None
) -> ProfileResult:
    return ProfileResult(index, outcome, reason, (), (), 0, _statuses(newest or {}))


def _statuses(newest: Newest) -> tuple[tuple[int, Status], ...]:
    return tuple((mapping_id, status) for mapping_id, status, _ in newest.values())


def _event_ms(parsed: _Parsed, received_ms: int) -> int:
    stamped = _no_later_than(parsed.timestamp, received_ms)
    return received_ms if stamped is None else stamped


def _newest(parsed: _Parsed, destination: Destination, received_ms: int) -> tuple[Newest, int]:
    """The one walk of a profile's audiences: per mapped audience its newest evaluation (the
    same audience under two namespaces: the newer wins, ties to the later); and how many
    named audiences are not mapped."""
    event_ms = _event_ms(parsed, received_ms)
    mapping_ids, fields = destination.audiences, destination.audience_fields
    newest: Newest = {}
    ignored = 0
    for audience, status, ts in parsed.memberships:
        field = fields.get(audience)
        if field is None:
            ignored += 1
            continue
        stamped = _no_later_than(ts, received_ms)
        version = event_ms if stamped is None else stamped
        seen = newest.get(field)
        if seen is None or seen[2] <= version:
            newest[field] = (mapping_ids[audience], status, version)
    return newest, ignored


def _full_parse(raw: dict[Any, Any], namespace: str) -> tuple[_Parsed | None, list[str]]:
    """Validation by the pydantic models: slower, but names every problem."""
    identities, problems = _identities(raw, namespace)
    try:
        profile = _Profile.model_validate(raw)
    except ValidationError as exc:
        return None, _problems(exc, ()) + problems
    if problems:
        return None, problems
    memberships = [
        (audience, m.status, m.lastQualificationTime)
        for audiences in (profile.segmentMembership or {}).values()
        for audience, m in audiences.items()
    ]
    ids = [identity.id for identity in identities]
    unmapped = profile.unmappedAudiences or 0
    return _Parsed(ids, memberships, profile.attributes or {}, profile.timestamp, unmapped), []


def _fast_parse(raw: dict[Any, Any], namespace: str) -> _Parsed | None:
    """The usual well-formed profile without pydantic; ``None`` on anything unusual.

    For JSON input it accepts only what the models accept and yields the same result (a
    test holds it to that); whatever it declines goes through ``_full_parse``.
    """
    identity_map = raw.get("identityMap")
    entries = identity_map.get(namespace) if type(identity_map) is dict else None
    segments = _or_empty(raw.get("segmentMembership"))
    attributes = _or_empty(raw.get("attributes"))
    if type(entries) is not list or type(segments) is not dict or type(attributes) is not dict:
        return None
    if not all(type(entry) is dict and "id" in entry for entry in entries):
        return None
    memberships = _fast_memberships(segments)
    if memberships is None:
        return None
    try:
        timestamp = _optional_time(raw.get("timestamp"))
    except ValueError:
        return None
    unmapped = raw.get("unmappedAudiences", 0)
    if type(unmapped) is not int or not 0 <= unmapped <= MAX_UNMAPPED_AUDIENCES:
        return None
    ids = [entry["id"] for entry in entries]
    return _Parsed(ids, memberships, attributes, timestamp, unmapped)


def _lenient_parse(raw: dict[Any, Any]) -> _Parsed:
    """The usable memberships of a profile rejected as malformed (each bad one left out, a bad
    time read as none), so that it is still counted against the audiences it names."""
    segments = raw.get("segmentMembership")
    memberships: list[tuple[str, Status, int | None]] = []
    for audiences in segments.values() if isinstance(segments, dict) else ():
        for audience, m in audiences.items() if isinstance(audiences, dict) else ():
            status = m.get("status") if isinstance(m, dict) else None
            if isinstance(audience, str) and status in STATUSES:
                ts = _time_or_none(m.get("lastQualificationTime"))
                memberships.append((audience, cast(Status, status), ts))
    return _Parsed([], memberships, {}, _time_or_none(raw.get("timestamp")))


def _time_or_none(value: object) -> int | None:
    try:
        return _optional_time(value)
    except ValueError:
        return None


def _or_empty(value: object) -> object:
    return {} if value is None else value


def _fast_memberships(segments: dict[Any, Any]) -> list[tuple[str, Status, int | None]] | None:
    memberships: list[tuple[str, Status, int | None]] = []
    for audiences in segments.values():
        if type(audiences) is not dict:
            return None
        for audience, m in audiences.items():
            if type(m) is not dict or (status := m.get("status")) not in STATUSES:
                return None
            try:
                ts = _optional_time(m.get("lastQualificationTime"))
            except ValueError:
                return None
            memberships.append((audience, status, ts))
    return memberships


def _audience_changes(newest: Newest, destination: Destination) -> dict[str, FieldChange]:
    changes = {
        field: FieldChange(field, destination.status_values[status], version)
        for field, (_, status, version) in newest.items()
    }
    # A status whose value is configured as null writes nothing (docs/admin.md): the field
    # keeps what it holds. Dropped only now, so it still wins over an older evaluation.
    return {f: c for f, c in changes.items() if c.value is not None}


def _attribute_changes(
    attributes: dict[str, Any],
    destination: Destination,
    event_ms: int,
    changes: dict[str, FieldChange],
) -> list[tuple[str, str]]:
    """Add the mapped attributes' changes; returns (attribute, reason) of each left out."""
    left_out: list[tuple[str, str]] = []
    for source, target in destination.attributes.items():
        value = _attribute_value(_lookup(attributes, source))
        if value is _ABSENT:
            continue  # absent, {} or null: nothing to change
        reason = UNUSABLE if value is _UNUSABLE else outreach_fields.check_value(target, value)
        if reason is not None:
            left_out.append((source, reason))
        else:
            copied = list(value) if isinstance(value, list) else value
            changes[target] = FieldChange(target, copied, event_ms)
    return left_out


_UNUSABLE: Any = object()
UNUSABLE = 'must be a value or an object like {"value": ...}'


def _attribute_value(leaf: Any) -> Any:
    """An attribute's value: AEP sends ``{"value": x}`` for freeform attributes and the
    plain value for predefined ones; ``{}`` and null carry none."""
    if isinstance(leaf, dict):
        if "value" in leaf:
            return leaf["value"]
        return _UNUSABLE if leaf else _ABSENT
    return _ABSENT if leaf is None else leaf


def _unmapped_attributes(attributes: dict[str, Any], destination: Destination) -> tuple[str, ...]:
    """Attributes carrying a value that no mapping reads (a path ``a.b`` reads ``a``)."""
    sources = destination.attributes
    return tuple(
        name
        for name, leaf in attributes.items()
        if name not in sources
        and not any(source.startswith(f"{name}.") for source in sources)
        and _attribute_value(leaf) is not _ABSENT
    )


def _lookup(attributes: dict[str, Any], key: str) -> Any:
    """The literal key first, else the dotted path through nested objects."""
    if key in attributes:
        return attributes[key]
    if "." not in key:
        return _ABSENT
    node: Any = attributes
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _prospect_ids(values: list[object]) -> tuple[tuple[int, ...], list[object]]:
    good: dict[int, None] = {}  # ordered, without repeats
    bad: list[object] = []
    for value in values:
        prospect = _positive_int(value)
        if prospect is None:
            bad.append(value)
        else:
            good[prospect] = None
    return tuple(good), bad


_EMAIL = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+")
_HASHED = re.compile(r"[0-9a-fA-F]{64}")
_MAX_EMAIL_CHARS = 254  # RFC 5321's longest path


def normalise_email(value: object) -> str | None:
    """``value`` trimmed and lower-cased when it is an email Outreach can be searched by."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    ok = len(email) <= _MAX_EMAIL_CHARS and _EMAIL.fullmatch(email) is not None
    return email if ok else None


def _emails(values: list[object]) -> tuple[tuple[str, ...], list[object]]:
    good: dict[str, None] = {}
    bad: list[object] = []
    for value in values:
        email = normalise_email(value)
        if email is None:
            bad.append(value)
        else:
            good[email] = None
    return tuple(good), bad


def _email_problem(namespace: str, value: object) -> str:
    if isinstance(value, str) and _HASHED.fullmatch(value.strip()):
        return (
            f"{namespace} is a hashed email (SHA-256): Outreach cannot look a prospect up by "
            "a hash; send the plain address"
        )
    return f"{namespace} {_short(value)} is not an email address"


def _hashed_only(raw: dict[Any, Any], namespace: str, match: tuple[str, ...]) -> str | None:
    """Why a profile that reaches its prospect only by a hashed email is rejected."""
    identity_map = raw.get("identityMap")
    if not isinstance(identity_map, dict) or identity_map.get(namespace):
        return None
    if not any(n in EMAIL_NAMESPACES for n in match):
        return None
    for name in identity_map:
        if name in HASHED_EMAIL_NAMESPACES and identity_map[name]:
            return (
                f"identityMap.{name}: hashed emails cannot be looked up in Outreach; map the "
                "Email namespace (plain addresses) instead"
            )
    return None


def _namespace(raw: dict[Any, Any], match: tuple[str, ...]) -> str:
    """The first namespace of ``match`` the profile carries (else the first: excluded)."""
    identity_map = raw.get("identityMap")
    if len(match) > 1 and isinstance(identity_map, dict):
        for namespace in match:
            if identity_map.get(namespace):
                return namespace
    return match[0]


def _positive_int(value: object) -> int | None:
    """The prospect id in ``value`` (an integer, or its decimal string), 1 to 2**63-1."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value) > _MAX_ID_DIGITS:
            return None
        number = int(value)
    else:
        return None
    return number if 0 < number <= _MAX_ID else None


def _identities(raw: dict[Any, Any], namespace: str) -> tuple[list[_Identity], list[str]]:
    """The profile's entries in ``namespace``; a malformed identityMap is _Profile's to report."""
    identity_map = raw.get("identityMap")
    entries = identity_map.get(namespace) if isinstance(identity_map, dict) else None
    if entries is None:
        return [], []
    try:
        return _IDENTITIES.validate_python(entries), []
    except ValidationError as exc:
        return [], _problems(exc, ("identityMap", namespace))


def _problems(exc: ValidationError, prefix: tuple[str, ...]) -> list[str]:
    problems = []
    for error in exc.errors():
        loc, msg = describe_error(error)
        where = format_loc((*prefix, *loc))
        problems.append(f"{where}: {msg}" if where else msg)
    return problems


def _join(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_PROBLEMS])
    more = len(problems) - _MAX_PROBLEMS
    return f"{shown}; and {more} more" if more > 0 else shown


def _json_type(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "a boolean" if value is not None else "null"
    names = {int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), type(value).__name__)
