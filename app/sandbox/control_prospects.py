"""Control API for prospects in bulk: seed many at once, read them by email."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from app.sandbox.attributes import check_name, check_value
from app.sandbox.context import SANDBOX_KEY
from app.sandbox.control import parse_body
from app.sandbox.timestamps import epoch_s


class _Seeded(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: None: the next free id, as a create would give.
    id: int | None = Field(default=None, ge=1)
    emails: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    #: Epoch seconds or ISO 8601; None: now.
    created_at: float | str | None = None
    updated_at: float | str | None = None


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prospects: list[_Seeded]


async def seed(request: web.Request) -> web.Response:
    """`POST /_sandbox/prospects` `{"prospects": [{id?, emails, attributes, created_at?,
    updated_at?}, ...]}`: store them as given (duplicate emails included); answers the ids."""
    body = await parse_body(request, _Seed)
    sandbox = request.app[SANDBOX_KEY]
    usable = sandbox.config.usable_custom_fields
    problems = [p for i, one in enumerate(body.prospects) for p in _problems(i, one, usable)]
    if problems:
        return web.json_response({"error": "; ".join(problems[:20])}, status=400)
    now, state = sandbox.clock(), sandbox.state
    ids: list[int] = []
    for one in body.prospects:
        pid = state.directory.next_id if one.id is None else one.id
        attributes = {**one.attributes, "emails": one.emails}
        updated = now if one.updated_at is None else _epoch(one.updated_at)
        created = None if one.created_at is None else _epoch(one.created_at)
        state.merge(pid, attributes, now=updated, created_at=created)
        ids.append(pid)
    return web.json_response({"ids": ids})


async def emails(request: web.Request) -> web.Response:
    """`GET /_sandbox/emails[?email=…][&duplicates=true]`: `{email: [ids]}` (emails lower-cased),
    only the given emails, or only those several prospects share."""
    sandbox = request.app[SANDBOX_KEY]
    sandbox.advance()
    index = sandbox.state.directory.by_email()
    wanted = {e.strip().lower() for e in request.query.getall("email", [])}
    if wanted:
        index = {e: index.get(e, []) for e in wanted}
    if request.query.get("duplicates", "").lower() == "true":
        index = {e: ids for e, ids in index.items() if len(ids) > 1}
    return web.json_response({"emails": index})


def _problems(index: int, seeded: _Seeded, usable_custom_fields: int) -> list[str]:
    found = []
    for name, value in seeded.attributes.items():
        error = check_name(name, usable_custom_fields) or check_value(name, value)
        if error is not None or name == "emails":
            detail = "give emails beside attributes" if error is None else error.detail
            found.append(f"prospects.{index}.attributes.{name}: {detail}")
    for text in (seeded.created_at, seeded.updated_at):
        if isinstance(text, str):
            try:
                epoch_s(text)
            except ValueError:
                found.append(f"prospects.{index}: {text!r} is not an ISO 8601 time")
    return found


def _epoch(value: float | str) -> float:
    return epoch_s(value) if isinstance(value, str) else value
