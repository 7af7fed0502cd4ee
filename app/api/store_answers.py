"""What a route answers when Redis fails it: a 503 to send again for an outage, a 500 bug
report for an error Redis answered with; a page on the routes a browser opens, JSON:API on
the others."""

from __future__ import annotations

import logging

from aiohttp import web

from app.api.jsonapi import STORE_RETRY_AFTER_S, store_unavailable
from app.api.jsonapi import error_response as error
from app.api.pages import page
from app.core.errors import unreachable

log = logging.getLogger("app.api.app")


#: Route prefixes answered with a page (a browser opens them), not JSON.
PAGE_ROUTES = ("/oauth/", "/status")


def store_failed(request: web.Request, exc: Exception) -> web.Response:
    """The answer to a Redis failure: 503 for an outage (``app.core.errors.unreachable``);
    for an error Redis answered with (a script's, say), a 500 reported as a bug: it is not
    an outage, and sending the same again would fail the same way."""
    if unreachable(exc):
        log.error("%s %s: Redis unavailable: %s", request.method, request.path, exc)
        return redis_down(request)
    # ERROR with the traceback: Sentry's logging integration reports it.
    log.exception("%s %s: Redis refused a command (a bug)", request.method, request.path)
    return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    message = (
        "The service's store refused this request: a bug, logged for the operators. Sending "
        "the same again will fail the same way."
    )
    if request.path.startswith(PAGE_ROUTES) and not request.path.endswith(".json"):
        return page(500, "Internal error", message)
    return error(500, "Internal error", message)


def redis_down(request: web.Request) -> web.Response:
    """The 503 that fits the route when Redis cannot be reached."""
    path, method = request.path, request.method
    if path.startswith(PAGE_ROUTES) and not path.endswith(".json"):
        return page(
            503,
            "Temporarily unavailable",
            "The service's store (Redis) cannot be reached. Nothing was changed; "
            "try again in a moment.",
            headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        )
    if method == "POST" and path.endswith("/profiles") and path.startswith("/v1/destinations/"):
        detail = (
            "Redis cannot be reached, so this request may not have been recorded: send it "
            "again (a repeat is harmless: changes merge by version)"
        )
    elif method in ("GET", "HEAD"):
        detail = "Redis cannot be reached, so this cannot be read now: try again shortly"
    else:
        detail = (
            "Redis cannot be reached, so this change may not have been made: once the "
            "service answers, read the resource back and repeat the change if it is missing"
        )
    return store_unavailable(detail)
