"""`POST /api/v2/prospects`: a new prospect, unless its email is taken or excluded."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.sandbox.config import SandboxConfig
from app.sandbox.errors import jsonapi_response, validation_error
from app.sandbox.pipeline import Call, serve
from app.sandbox.resources import prospect_resource
from app.sandbox.state import SandboxState
from app.sandbox.validation import check_values, parse_create, require_jsonapi

TAKEN = "Contacts email hash has already been taken."
EXCLUDED = "Contacts contact is using an excluded email address."


async def create_prospect(request: web.Request) -> web.StreamResponse:
    """201 with the new resource; 422 when an email is taken or excluded."""
    return await serve(request, _create, scope="prospects.write", log_attributes=True)


def _create(call: Call) -> web.Response:
    sandbox = call.sandbox
    require_jsonapi(call.request)
    attributes = parse_create(call.document, sandbox.config.usable_custom_fields)
    check_values(attributes, dict(sandbox.config.custom_field_types))
    check_emails(sandbox.state, sandbox.config, attributes.get("emails") or [])
    call.prospect_id = sandbox.state.create(attributes, now=sandbox.clock())
    return jsonapi_response(201, {"data": prospect_resource(sandbox.state, call.prospect_id)})


def check_emails(state: SandboxState, config: SandboxConfig, emails: list[Any]) -> None:
    """The 422 Outreach sends for an excluded address, or one another prospect has
    (unless purposeful duplicates are on)."""
    excluded = {domain.lower() for domain in config.excluded_email_domains}
    if any(email.rpartition("@")[2].strip().lower() in excluded for email in emails):
        raise validation_error(EXCLUDED, "/data")
    if config.purposeful_duplicates:
        return
    if state.directory.taken(emails, case_sensitive=config.dedupe_case_sensitive):
        raise validation_error(TAKEN, "/data")
