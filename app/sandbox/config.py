"""Configuration of the Outreach sandbox."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.sandbox.scopes import ALL_SCOPES

MAX_CUSTOM_FIELDS = 150


class SandboxConfig(BaseModel):
    """Every knob of the sandbox; `POST /_sandbox/config` applies partial updates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quota_limit: Annotated[int, Field(ge=0)] = 10_000
    quota_window_s: Annotated[float, Field(gt=0)] = 3600.0
    quota_mode: Literal["fixed", "sliding"] = "fixed"
    usable_custom_fields: Annotated[int, Field(ge=0, le=MAX_CUSTOM_FIELDS)] = MAX_CUSTOM_FIELDS
    #: Custom fields of another type than text (N -> "number", "date", ...), as `GET /types`
    #: lists them; a PATCH of a value that is not of that type gets 422.
    custom_field_types: dict[int, Literal["text", "number", "date"]] = Field(default_factory=dict)
    prospect_ids: tuple[int, int] = (1, 10_000_000)
    access_token_ttl_s: Annotated[int, Field(ge=0)] = 7200
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    static_tokens: dict[str, str] = Field(default_factory=dict)
    deny_authorize: bool = False
    token_429_next: Annotated[int, Field(ge=0)] = 0
    send_ratelimit_headers: bool = True
    send_retry_after: bool = True
    #: Outreach does not always say which field it refused: off, errors carry no pointer.
    field_pointers: bool = True
    fault_5xx_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    fault_latency_ms: tuple[int, int] = (0, 0)
    fault_drop_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    fault_seed: int | None = None
    #: Bulk API: what a bulk call costs of the quota ("call": one request; "record": one per
    #: id), the largest id list, how fast batches are worked through, and batch faults
    #: ("stick": never progresses, "cancel": Outreach cancels it, "forbidden": 403 missing
    #: scopes, "not_found": 404 unknown action, "malformed": answers of an unexpected shape).
    bulk_cost: Literal["call", "record"] = "call"
    bulk_max_ids: Annotated[int, Field(ge=1)] = 1000
    bulk_records_per_s: Annotated[float, Field(gt=0)] = 1000.0
    bulk_fault: Literal["none", "stick", "cancel", "forbidden", "not_found", "malformed"] = "none"
    bulk_page_size_max: Annotated[int, Field(ge=1)] = 1000
    #: The scopes of static and control-registered tokens (OAuth grants hold what was asked).
    static_token_scope: str = ALL_SCOPES
    #: Cursor-paged lists (prospects, sequence states, mailboxes): the largest `page[size]`
    #: (1000 is unconfirmed) and whether a larger one is clamped or refused with a 400.
    page_size_max: Annotated[int, Field(ge=1)] = 1000
    page_size_over_max: Literal["clamp", "refuse"] = "clamp"
    #: Lookup by email, where Outreach's behaviour is unconfirmed: case-sensitive matching,
    #: several values per filter (off: 400 on a list), the most values per filter, and
    #: whether the repeated `filter[emails][]` form needs `newFilterSyntax=true`.
    lookup_case_sensitive: bool = False
    lookup_lists: bool = True
    lookup_max_values: Annotated[int, Field(ge=1)] | None = None
    lookup_brackets_need_new_syntax: bool = True
    #: Creating prospects: several prospects per email ("Purposeful Duplicates"), whether
    #: the email dedupe tells case apart, and domains whose addresses are excluded.
    purposeful_duplicates: bool = False
    dedupe_case_sensitive: bool = False
    excluded_email_domains: tuple[str, ...] = ()
    #: Sequences (unconfirmed): a disabled sequence refuses enrolments or takes them as
    #: `pending`; an enrolment without a mailbox is refused or uses the user's default.
    disabled_sequence: Literal["refuse", "pending"] = "refuse"
    enroll_without_mailbox: Literal["refuse", "default"] = "refuse"

    @model_validator(mode="after")
    def _check_ranges(self) -> SandboxConfig:
        low, high = self.prospect_ids
        if low > high:
            raise ValueError("prospect_ids must be (low, high) with low <= high")
        low_ms, high_ms = self.fault_latency_ms
        if not 0 <= low_ms <= high_ms:
            raise ValueError("fault_latency_ms must be (min, max) with 0 <= min <= max")
        return self

    def updated(self, changes: dict[str, Any]) -> SandboxConfig:
        """A validated copy with `changes` applied (unknown keys are rejected)."""
        return SandboxConfig.model_validate({**self.model_dump(), **changes})

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data."""
        return self.model_dump(mode="json")
