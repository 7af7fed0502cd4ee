"""Destination configuration: Outreach connections and what each destination writes where.

A configuration file is JSON (or TOML when its name ends in ``.toml``)::

    {"connections": [{"id": "sandbox", "access_token": "env:OUTREACH_TOKEN"}],
     "destinations": [{"id": "demo", "name": "Demo", "connection": "sandbox",
                       "audiences": {"<audience id>": 4},
                       "attributes": {"firstName": "firstName"}}]}

``load_config`` / ``parse_config`` report every problem of an invalid file at once.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from app.config.sequencing import Sequencing
from app.core.keys import DEFAULT_RATE_LIMIT
from app.outreach import fields as outreach_fields

Status = Literal["realized", "existing", "exited"]
Loc = tuple[int | str, ...]

STATUSES: tuple[Status, ...] = ("realized", "existing", "exited")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# The single-limit subset of the `limits` library's string notation.
_RATE = re.compile(
    r"\s*(?P<count>[0-9]+)\s*(?:/|per)\s*(?P<multiple>[0-9]+)?\s*"
    r"(?P<unit>second|minute|hour|day)s?\s*"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Raised by the models' own cross-field checks; parse_config reports these per location instead.
_CONFLICT = "config_conflict"


class ConfigError(ValueError):
    """An unusable configuration; ``problems`` lists every problem, each naming its location."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        super().__init__(problems, source)
        self.problems = problems
        self.source = source

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        count = len(self.problems)
        lines = "".join(f"\n  - {p}" for p in self.problems)
        return f"invalid configuration{where} ({count} problem{'s' * (count != 1)}):{lines}"


class UnknownIdError(KeyError):
    """No connection or destination has the id asked for."""

    def __init__(self, kind: str, id: str, known: Iterable[str]) -> None:
        super().__init__(kind, id)
        self.kind = kind
        self.id = id
        self.known = tuple(known)

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"no {self.kind} with id {self.id!r} (configured: {known})"


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid id: use 1 to 64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


def _rate_limit(value: str) -> str:
    match = _RATE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a rate limit: write '<count>/<unit>' or "
            "'<count> per <n> <unit>s' with unit second, minute, hour or day "
            "(e.g. '10000/hour', '60 per 10 seconds')"
        )
    if int(match["count"]) < 1 or (match["multiple"] is not None and int(match["multiple"]) < 1):
        raise ValueError(f"{value!r} is not a rate limit: counts must be at least 1")
    return value


def _mapping_id(value: int) -> int:
    if not _in_range(value):
        lo, hi = outreach_fields.CUSTOM_MIN, outreach_fields.CUSTOM_MAX
        raise ValueError(f"mapping ID {value} is outside {lo}–{hi}")  # noqa: RUF001 - en dash as in the docs
    return value


def _writable(value: str) -> str:
    if not outreach_fields.is_writable(value):
        raise ValueError(f"{value!r} is not a writable Outreach prospect attribute")
    return value


def _secret(value: object) -> object:
    """Resolve ``env:NAME`` from the environment; messages name the variable, never a value."""
    if not isinstance(value, str):
        return value
    if value == "":
        raise ValueError("must not be empty (omit it or use null instead)")
    if not value.startswith("env:"):
        return value
    name = value.removeprefix("env:")
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"{name!r} after 'env:' is not an environment variable name")
    resolved = os.environ.get(name)
    if resolved is None:
        raise ValueError(f"environment variable {name} is not set")
    if resolved == "":
        raise ValueError(f"environment variable {name} is empty")
    return resolved


Slug = Annotated[str, AfterValidator(_slug)]
MappingId = Annotated[StrictInt, AfterValidator(_mapping_id)]
Key = Annotated[str, StringConstraints(min_length=1)]
Target = Annotated[str, AfterValidator(_writable)]
StatusValue = Annotated[str, StringConstraints(max_length=outreach_fields.CUSTOM_MAX_LENGTH)]


def _identity_statuses() -> dict[Status, str | None]:
    return {s: s for s in STATUSES}


class _Model(BaseModel):
    # hide_input_in_errors: a ValidationError's text must never carry a token.
    # allow_inf_nan=False: JSON has no infinity (1e999 and Infinity parse to one, and
    # pydantic would store it as null, which no reader accepts): refused, naming the field.
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, hide_input_in_errors=True, allow_inf_nan=False
    )


class Connection(_Model):
    """An authorised Outreach user; every request through it spends that user's quota."""

    id: Slug
    # The default is never kept: _user_defaults_to_id fills in the id.
    user: Annotated[str, StringConstraints(min_length=1, max_length=255)] = ""
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    rate_limit: Annotated[str, AfterValidator(_rate_limit)] = DEFAULT_RATE_LIMIT
    #: Share of the user's quota left unspent, for the user's own work in Outreach.
    reserve_share: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _user_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("user") is None and "id" in data:
            return {**data, "user": data["id"]}
        return data

    @field_validator("access_token", "refresh_token", mode="before")
    @classmethod
    def _resolve_env(cls, value: object) -> object:
        return _secret(value)


class Bulk(_Model):
    """Outreach's Bulk API for backfills: many prospects given the same values in one call.
    Off by default (it needs the ``batches.*`` scopes, and Outreach's limits for it are
    undocumented); the other defaults suit the common backfill of one audience."""

    enabled: bool = False
    #: The smallest group of identical changes sent by bulk; smaller ones go by PATCH.
    min_group: Annotated[StrictInt, Field(ge=2)] = 50
    #: Ids per bulk call (Outreach's largest list is undocumented).
    ids_per_call: Annotated[StrictInt, Field(ge=1, le=10_000)] = 1000
    #: A batch not finished this long after its call is cancelled and sent by PATCH.
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    #: First wait before polling a batch; each poll waits twice as long, up to ``poll_max_s``.
    poll_first_s: Annotated[float, Field(gt=0)] = 2.0
    poll_max_s: Annotated[float, Field(gt=0)] = 60.0
    #: How long bulk stays off after Outreach refused it (403, 404, repeated batch failures).
    off_s: Annotated[float, Field(gt=0)] = 3600.0


#: Identity namespaces whose values are prospect emails (AEP's ``Email``).
EMAIL_NAMESPACES = frozenset({"Email"})
#: Namespaces of hashed emails: Outreach cannot be searched by a hash.
HASHED_EMAIL_NAMESPACES = frozenset({"Email_LC_SHA256", "Email_SHA256"})


def _matchable(value: str) -> str:
    if value in HASHED_EMAIL_NAMESPACES or "sha256" in value.lower():
        raise ValueError(
            f"{value!r} holds hashed emails: Outreach cannot look a prospect up by a hash "
            "(send the Email namespace instead)"
        )
    return value


Namespace = Annotated[str, StringConstraints(min_length=1), AfterValidator(_matchable)]


class Identity(_Model):
    """How a profile reaches its prospect(s): the first namespace of ``match`` it carries
    wins. ``Email`` is looked up (``app/resolve``); other namespaces carry prospect ids."""

    match: Annotated[list[Namespace], Field(min_length=1)] = Field(
        default_factory=lambda: ["OutreachId"]
    )
    #: No prospect has the email: leave the changes as a failure, or create the prospect.
    on_missing: Literal["skip", "create"] = "skip"
    #: Several prospects share the email: fail, update them all, or the newest (updatedAt).
    on_ambiguous: Literal["skip", "all", "newest"] = "skip"

    @field_validator("match", mode="after")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a namespace twice")
        return value

    @property
    def by_email(self) -> bool:
        """Whether some profiles are known by email (resolution runs for the destination)."""
        return any(n in EMAIL_NAMESPACES for n in self.match)


class Destination(_Model):
    """One dataflow: which audiences and attributes go to which prospect fields."""

    id: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: str = ""
    connection: str
    enabled: bool = True
    identity_namespace: Annotated[str, StringConstraints(min_length=1)] = "OutreachId"
    audiences: dict[Key, MappingId] = Field(default_factory=dict)
    #: Where each audience's mapping ID comes from: this ``audiences`` table ("config"), or
    #: each membership's ``mappingId`` in the producer's data ("data": AEP's Mapping ID,
    #: learned and kept per audience; docs/aep.md).
    mapping_ids: Literal["config", "data"] = "config"
    attributes: dict[Key, Target] = Field(default_factory=dict)
    status_values: dict[Status, StatusValue | None] = Field(default_factory=_identity_statuses)
    coalesce_window_ms: Annotated[StrictInt, Field(ge=0)] | None = None
    #: Most of its user's quota this destination may spend (None: no cap of its own), so
    #: destinations sharing an Outreach user cannot starve one another.
    quota_share: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    bulk: Bulk = Field(default_factory=Bulk)
    #: Sequence enrollment per audience (app/config/sequencing.py); off by default.
    sequencing: Sequencing = Field(default_factory=Sequencing)
    #: Which identities reach a prospect (default: ``identity_namespace``, ids only).
    identity: Identity | None = None

    @property
    def match(self) -> tuple[str, ...]:
        """The identity namespaces a profile is matched by, in order of preference."""
        return tuple(self.identity.match) if self.identity else (self.identity_namespace,)

    @field_validator("status_values", mode="after")
    @classmethod
    def _unmapped_status_is_written_as_received(
        cls, value: dict[Status, str | None]
    ) -> dict[Status, str | None]:
        return {**_identity_statuses(), **value}

    @model_validator(mode="after")
    def _one_source_of_mapping_ids(self) -> Destination:
        if self.mapping_ids == "data" and self.audiences:
            raise ValueError(
                'audiences must be empty when mapping_ids is "data": the mapping IDs come '
                "with the data"
            )
        return self

    @model_validator(mode="after")
    def _entry_and_exit_told_apart(self) -> Destination:
        if self.sequencing.enabled:
            _raise_conflicts(sequencing_conflicts(self.status_values))
        return self

    @model_validator(mode="after")
    def _no_field_written_twice(self) -> Destination:
        _raise_conflicts(destination_conflicts(self.audiences, self.attributes))
        return self

    @property
    def audience_fields(self) -> Mapping[str, str]:
        """Audience id -> its ``customN`` field; computed once per ``audiences`` mapping."""
        # Keyed by the mapping itself: model_copy(update=...) copies __dict__, cache included.
        cached = self.__dict__.get("_audience_fields")
        if cached is None or cached[0] is not self.audiences:
            fields = {a: outreach_fields.custom_field(n) for a, n in self.audiences.items()}
            cached = self.__dict__["_audience_fields"] = (self.audiences, fields)
        return cached[1]

    def field_for(self, audience_id: str) -> str | None:
        """The ``customN`` prospect field holding this audience's status, if it is mapped."""
        return self.audience_fields.get(audience_id)


class Config(_Model):
    """Every connection and destination of one deployment."""

    connections: list[Connection] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids_unique_and_resolved(self) -> Config:
        _raise_conflicts(config_conflicts(self.model_dump(include={"connections", "destinations"})))
        return self

    def destination(self, id: str) -> Destination:
        """The destination ``id``; raises ``UnknownIdError`` (a ``KeyError``) if absent."""
        found = next((d for d in self.destinations if d.id == id), None)
        if found is None:
            raise UnknownIdError("destination", id, (d.id for d in self.destinations))
        return found

    def connection(self, id: str) -> Connection:
        """The connection ``id``; raises ``UnknownIdError`` (a ``KeyError``) if absent."""
        found = next((c for c in self.connections if c.id == id), None)
        if found is None:
            raise UnknownIdError("connection", id, (c.id for c in self.connections))
        return found


def _raise_conflicts(problems: list[tuple[Loc, str]]) -> None:
    if problems:
        text = "; ".join(_line(loc, msg) for loc, msg in problems)
        raise PydanticCustomError(_CONFLICT, text)


# The conflict checks read raw, possibly malformed data (skipping what field validation
# reports anyway) so that parse_config can report them together with pydantic's errors.


def destination_conflicts(audiences: object, attributes: object) -> list[tuple[Loc, str]]:
    """Prospect fields written by more than one audience or attribute mapping."""
    problems: list[tuple[Loc, str]] = []
    writer: dict[str, str] = {}
    for audience, n in _items(audiences):
        if isinstance(n, bool) or not isinstance(n, int) or not _in_range(n):
            continue
        field = outreach_fields.custom_field(n)
        if field in writer:
            problems.append(
                (("audiences", audience), f"mapping ID {n} is already used by {writer[field]}")
            )
        else:
            writer[field] = f"audience {audience} (mapping ID {n})"
    for source, target in _items(attributes):
        if not isinstance(target, str) or not outreach_fields.is_writable(target):
            continue
        if target in writer:
            problems.append(
                (("attributes", source), f"{target} is already written by {writer[target]}")
            )
        else:
            writer[target] = f"attribute {source}"
    return problems


def sequencing_conflicts(status_values: object) -> list[tuple[Loc, str]]:
    """Enrollment reads entry and exit from the value delivered: they must differ."""
    values = {**_identity_statuses(), **(status_values if isinstance(status_values, dict) else {})}
    exited = values.get("exited")
    if exited in (values.get("realized"), values.get("existing")):
        msg = "exited must be written differently from realized and existing when sequencing"
        return [(("status_values", "exited"), msg)]
    return []


def config_conflicts(data: Mapping[str, object]) -> list[tuple[Loc, str]]:
    """Duplicate ids, fields written twice, and destinations naming an unknown connection."""
    conns = [c if isinstance(c, dict) else {} for c in _list(data.get("connections"))]
    dests = [d if isinstance(d, dict) else {} for d in _list(data.get("destinations"))]
    problems: list[tuple[Loc, str]] = []
    for section, entries in (("connections", conns), ("destinations", dests)):
        first: dict[object, int] = {}
        for i, entry in enumerate(entries):
            id_ = entry.get("id")
            if isinstance(id_, str) and id_ in first:
                msg = f"duplicate id {id_!r} (also {section}[{first[id_]}])"
                problems.append(((section, i, "id"), msg))
            first.setdefault(id_, i)
    known = sorted({c["id"] for c in conns if isinstance(c.get("id"), str)})
    for i, dest in enumerate(dests):
        conn = dest.get("connection")
        if isinstance(conn, str) and conn not in known:
            msg = f"unknown connection {conn!r} (configured: {', '.join(known) or 'none'})"
            problems.append((("destinations", i, "connection"), msg))
        conflicts = destination_conflicts(dest.get("audiences"), dest.get("attributes"))
        sequencing = dest.get("sequencing")
        if isinstance(sequencing, dict) and sequencing.get("sequences"):
            conflicts += sequencing_conflicts(dest.get("status_values"))
        problems += [(("destinations", i, *loc), msg) for loc, msg in conflicts]
    return problems


def _items(value: object) -> list[tuple[str, object]]:
    pairs = value.items() if isinstance(value, dict) else ()
    return [(k, v) for k, v in pairs if isinstance(k, str)]


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _in_range(n: int) -> bool:
    return outreach_fields.CUSTOM_MIN <= n <= outreach_fields.CUSTOM_MAX


def format_loc(loc: Iterable[int | str]) -> str:
    """``("destinations", 0, "audiences", "a")`` -> ``destinations[0].audiences.a``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_PLAIN = {
    "missing": "is required",
    "extra_forbidden": "is not a known setting",
    "model_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "finite_number": "must be a finite number (not infinity or NaN)",
}


def describe_error(error: ErrorDetails) -> tuple[Loc, str]:
    """One error of a pydantic ``ValidationError`` as (location, reason), never the input."""
    loc = tuple(error["loc"])
    msg = _PLAIN.get(error["type"]) or error["msg"].removeprefix("Value error, ")
    if error["type"] == "literal_error":
        msg = f"must be one of {error.get('ctx', {}).get('expected', '')}"
    if loc and loc[-1] == "[key]":
        loc, msg = loc[:-1], f"key {msg}"
    return loc, msg


def _line(loc: Loc, msg: str) -> str:
    return f"{format_loc(loc)}: {msg}" if loc else msg


def _loc_order(problem: tuple[Loc, str]) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in problem[0])


def parse_config(data: object, *, source: str | None = None) -> Config:
    """Validate decoded JSON/TOML; raises ``ConfigError`` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(["the configuration must be an object"], source)
    problems = config_conflicts(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Conflicts were found above, one per location, from the raw data.
        problems += [describe_error(e) for e in exc.errors() if e["type"] != _CONFLICT]
    if problems:
        problems.sort(key=_loc_order)
        raise ConfigError([_line(loc, msg) for loc, msg in problems], source)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a JSON (or ``.toml``) configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"cannot read the file: {reason}"], str(path)) from None
    try:
        data: object = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ConfigError([f"not valid JSON at {where}: {exc.msg}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    return parse_config(data, source=str(path))
