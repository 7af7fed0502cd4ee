"""Control API for armed fault rules (see `fault_rules`)."""

from __future__ import annotations

from aiohttp import web

from app.sandbox.context import SANDBOX_KEY
from app.sandbox.control import parse_body
from app.sandbox.fault_rules import FaultRule


async def arm(request: web.Request) -> web.Response:
    """`POST /_sandbox/faults` `{route, kind, rate?, count?, status?}`: arm one more rule."""
    rule = await parse_body(request, FaultRule)
    rules = request.app[SANDBOX_KEY].faults.rules
    rules.arm(rule)
    return web.json_response({"rules": rules.to_json()})


async def armed(request: web.Request) -> web.Response:
    """`GET /_sandbox/faults`: every armed rule and how often it struck."""
    return web.json_response({"rules": request.app[SANDBOX_KEY].faults.rules.to_json()})


async def disarm(request: web.Request) -> web.Response:
    """`POST /_sandbox/faults/clear`: disarm every rule."""
    request.app[SANDBOX_KEY].faults.rules.clear()
    return web.json_response({"rules": []})
