"""What another web site may make an operator's browser send us, and the answers that stop it.

Cross-site requests: a page elsewhere can make a browser send a form or a simple ``fetch``
here, with cached Basic-auth credentials; browsers say so (``Sec-Fetch-Site``, ``Origin``).
DNS rebinding: a page elsewhere can make its own host name resolve to 127.0.0.1, and then
read our answers as same-origin; only the ``Host`` header tells. That matters where the admin
surface is open (development without ``ADMIN_API_KEY``): there only loopback names and
``API_ALLOWED_HOSTS`` are answered.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from aiohttp import web

from app.api.jsonapi import error_response
from app.ops.startup import is_loopback

#: What browsers say (``Sec-Fetch-Site``) of a request from our own origin or typed by hand.
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


def cross_site_refusal(request: web.Request) -> web.Response | None:
    """None unless a browser says the request comes from another site; then the 403."""
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    origin = request.headers.get("Origin")
    foreign = bool(site) and site not in SAME_SITE_FETCHES
    if origin is not None and not foreign:
        _, _, host = origin.strip().partition("://")
        # Only the host is compared: behind a TLS proxy the scheme we see may differ.
        foreign = not host or host.lower() != request.host.lower()
    if not foreign:
        return None
    return error_response(
        403,
        "Cross-site request refused",
        "a browser marked this request as sent from another site (Sec-Fetch-Site or "
        "Origin); send it from a server or the command line, not from a web page",
    )


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header (no port, no IPv6 brackets, lower case); None if none."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:  # e.g. an unbalanced "[" or a port that is not a number
        return None
    return name or None


def foreign_host_refusal(request: web.Request, allowed: Collection[str]) -> web.Response | None:
    """None when ``Host`` names a loopback address or one of ``allowed``; else the 421."""
    name = host_name(request.host)
    if name is not None and (is_loopback(name) or name in allowed):
        return None
    return error_response(
        421,
        "Host not served",
        f"Host {request.host[:100]!r} is not served: without ADMIN_API_KEY only loopback names "
        "(localhost, 127.0.0.1, [::1]) and API_ALLOWED_HOSTS are answered",
    )
