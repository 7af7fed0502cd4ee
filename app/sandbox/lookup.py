"""`GET /api/v2/prospects`: finding prospects by email (or id), cursor-paged.

`filter[emails]=a,b` (comma list: OR), or with `newFilterSyntax=true` the repeated form
`filter[emails][]=a&filter[emails][]=b`; `filter[id]=1,2`; both together are ANDed.
Sparse fieldsets (`fields[prospect]=emails,updatedAt`) are honoured.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from app.sandbox.attributes import custom_index
from app.sandbox.config import SandboxConfig
from app.sandbox.errors import bad_request, jsonapi_response
from app.sandbox.paging import list_body, paginate, wants_count
from app.sandbox.pipeline import Call, serve
from app.sandbox.resources import prospect_resource

EMAILS, EMAILS_REPEATED, IDS = "filter[emails]", "filter[emails][]", "filter[id]"
_FILTER = re.compile(r"filter\[([^\]]*)\](\[\])?")
#: Outreach refuses these (confirmed); other filterable attributes the sandbox lacks.
_NOT_FILTERABLE = frozenset({"externalId"})


async def find_prospects(request: web.Request) -> web.StreamResponse:
    """The matching prospects, by ascending id, one page at a time."""
    return await serve(request, _find, scope="prospects.read")


def _find(call: Call) -> web.Response:
    sandbox, query = call.sandbox, call.query
    _check_filter_names(query)
    emails = email_filter(query, sandbox.config)
    ids = id_filter(query)
    directory = sandbox.state.directory
    found: set[int] | None = None
    if emails is not None:
        case_sensitive = sandbox.config.lookup_case_sensitive
        found = set().union(*(directory.ids_for(e, case_sensitive=case_sensitive) for e in emails))
    if ids is not None:
        found = ids if found is None else found & ids
    stored = sandbox.state.prospects
    matches = sorted(stored if found is None else (pid for pid in found if pid in stored))
    page, next_url = paginate(matches, int, call.request, sandbox.config)
    fields = _fields(query)
    data = [prospect_resource(sandbox.state, pid, fields) for pid in page]
    count = len(matches) if wants_count(query) else None
    return jsonapi_response(200, list_body(data, next_url, count))


def email_filter(query: Any, config: SandboxConfig) -> list[str] | None:
    """The emails asked for, in either syntax; None when there is no email filter."""
    values: list[str] = []
    for raw in query.getall(EMAILS, []):
        values += raw.split(",")
    repeated = query.getall(EMAILS_REPEATED, [])
    new_syntax = str(query.get("newFilterSyntax", "")).lower() == "true"
    if repeated and config.lookup_brackets_need_new_syntax and not new_syntax:
        raise bad_request(f"{EMAILS_REPEATED} needs newFilterSyntax=true.")
    for raw in repeated:
        values += raw.split(",")
    if EMAILS not in query and EMAILS_REPEATED not in query:
        return None
    emails = [v.strip() for v in values if v.strip()]
    if not emails:
        raise bad_request(f"{EMAILS} needs at least one value.")
    if len(emails) > 1 and not config.lookup_lists:
        raise bad_request(f"{EMAILS} accepts a single value.")
    limit = config.lookup_max_values
    if limit is not None and len(emails) > limit:
        raise bad_request(f"{EMAILS} accepts at most {limit} values, got {len(emails)}.")
    return emails


def id_filter(query: Any) -> set[int] | None:
    """The ids of `filter[id]=1,2,3`, or None."""
    raw = query.get(IDS)
    if raw is None:
        return None
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise bad_request(f"{IDS} must be a comma-separated list of integer ids.")
    return {int(p) for p in parts}


def _check_filter_names(query: Any) -> None:
    for key in query:
        match = _FILTER.fullmatch(key)
        if match is None:
            continue
        name = match.group(1)
        if name in _NOT_FILTERABLE or custom_index(name) is not None:
            raise bad_request(f"Prospects cannot be filtered by '{name}'.")
        if name not in ("emails", "id"):
            raise bad_request(f"The sandbox does not implement filter[{name}].")


def _fields(query: Any) -> frozenset[str] | None:
    raw = query.get("fields[prospect]")
    if raw is None:
        return None
    return frozenset(name.strip() for name in raw.split(",") if name.strip())
