"""The one way through for every API route: faults, auth, quota, scope, then the action.

Order: armed or random drop, latency, 401 without a live token, bulk batches advanced, quota
charged (429 when spent), 403 without the route's scope, armed or random 5xx, the action,
then the armed after-write faults on a successful answer; the request is logged at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.sandbox.context import SANDBOX_KEY, Sandbox
from app.sandbox.errors import ApiError, missing_scope, unauthorized
from app.sandbox.fault_rules import AFTER_WRITE
from app.sandbox.faults import server_error_response
from app.sandbox.ratelimit import rate_limit_exceeded, ratelimit_headers
from app.sandbox.scopes import allows
from app.sandbox.state import DROPPED, RequestRecord
from app.sandbox.validation import attribute_names, decode_body


@dataclass(slots=True)
class Call:
    """One API request on its way through; actions may fill in what the log records."""

    sandbox: Sandbox
    request: web.Request
    body: bytes = b""
    user: str = ""
    prospect_id: int | None = None
    attributes: tuple[str, ...] = ()

    @property
    def document(self) -> Any:
        """The JSON body, or None if it is not JSON."""
        return decode_body(self.body)

    @property
    def query(self) -> Any:
        """The query parameters (a multidict)."""
        return self.request.query


Action = Callable[[Call], web.Response]
Cost = Callable[[Call], int]


def one(_: Call) -> int:
    """The quota cost of an ordinary request."""
    return 1


async def serve(
    request: web.Request,
    action: Action,
    *,
    scope: str | None = None,
    cost: Cost = one,
    prospect_id: int | None = None,
    log_attributes: bool = False,
) -> web.StreamResponse:
    """Answer `request` with `action` once it passed every gate; `scope` is what the token
    must hold, `cost` what the request charges of the user's quota."""
    sandbox = request.app[SANDBOX_KEY]
    call = Call(sandbox, request, prospect_id=prospect_id)
    route = route_name(request)
    if sandbox.faults.drop(sandbox.config) or sandbox.faults.ruled(route, ("drop",)):
        return _drop(call)
    delay = sandbox.faults.latency_s(sandbox.config)
    if delay > 0:
        await asyncio.sleep(delay)
    call.body = await request.read()
    if log_attributes:
        call.attributes = attribute_names(call.document)
    response = _answer(call, action, scope, cost)
    if 200 <= response.status < 300:
        rule = sandbox.faults.ruled(route, AFTER_WRITE)
        if rule is not None and rule.kind == "drop_after_write":
            return _drop(call)
        if rule is not None:
            response = server_error_response(rule.status, sandbox.clock())
    _log(call, response.status)
    return response


def route_name(request: web.Request) -> str:
    """`METHOD /path/{template}`, the name armed fault rules use."""
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else request.path
    return f"{request.method} {template}"


def _answer(call: Call, action: Action, scope: str | None, cost: Cost) -> web.Response:
    sandbox = call.sandbox
    grant = sandbox.tokens.grant_for(_bearer(call.request))
    if grant is None:
        return unauthorized().response()
    call.user = grant.user
    # Bulk records due before this request are written before it, as Outreach would have.
    sandbox.advance()
    refused: ApiError | None = None
    try:
        units = cost(call)
    except ApiError as error:
        refused, units = error, 1
    decision = sandbox.quota.hit(call.user, units)
    now = sandbox.clock()
    if not decision.allowed:
        response = rate_limit_exceeded(decision.status).response()
    elif scope is not None and not allows(grant.scope, scope):
        response = missing_scope(scope).response()
    else:
        response = _admitted(call, action, refused, now)
    limited = not decision.allowed
    response.headers.update(ratelimit_headers(sandbox.config, decision.status, now, limited))
    return response


def _admitted(call: Call, action: Action, refused: ApiError | None, now: float) -> web.Response:
    sandbox = call.sandbox
    try:
        if refused is not None:
            raise refused
        rule = sandbox.faults.ruled(route_name(call.request), ("5xx",))
        if rule is not None:
            return server_error_response(rule.status, now)
        failure = sandbox.faults.server_error(sandbox.config, now)
        if failure is not None:
            return failure
        return action(call)
    except ApiError as error:
        if not sandbox.config.field_pointers:
            error.pointer = None
        return error.response()


def _drop(call: Call) -> web.Response:
    transport = call.request.transport
    if transport is not None:
        transport.close()
    _log(call, DROPPED)
    # aiohttp fails to write this to the closed transport and abandons the connection.
    return web.Response(status=204)


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _log(call: Call, status: int) -> None:
    entry = RequestRecord(
        time=call.sandbox.clock(),
        method=call.request.method,
        path=call.request.path,
        user=call.user or None,
        status=status,
        prospect_id=call.prospect_id,
        attributes=call.attributes,
    )
    call.sandbox.state.record(entry)
