"""Who may use the admin surface: destinations, connections, OAuth start, the status page.

One operator secret, ``ADMIN_API_KEY``, sent as ``Authorization: Bearer <key>`` or as the
password of HTTP Basic auth (so a browser can open the OAuth start URL and the status page).
In development mode without a key the admin surface is open, and the service says so at start;
it then answers only loopback Host names (and ``API_ALLOWED_HOSTS``), against DNS rebinding.
Every admin write that a browser marks as cross-site is refused, whatever its credentials.
Producer keys are a separate matter (app/api/producer_auth.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from aiohttp import web

from app.api.browsers import cross_site_refusal, foreign_host_refusal
from app.core.settings import Settings

REALM = 'Basic realm="outreach-sync admin", charset="UTF-8"'
#: Methods that change nothing: a browser sends them cross-site, but cannot read the answer.
READS = frozenset({"GET", "HEAD", "OPTIONS"})


def presented_secret(request: web.Request) -> str | None:
    """The secret a request carries: a bearer token or a Basic-auth password."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic":
        return _basic_password(value.strip())
    return None


def bearer_token(request: web.Request) -> str | None:
    """The ``Authorization: Bearer`` token, if the request carries one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def secret_bytes(secret: str) -> bytes:
    """``secret`` as bytes to compare. aiohttp decodes header bytes that are not UTF-8 with
    surrogateescape; encoding them back the same way gives the bytes sent (a plain
    ``encode()`` would raise, and the request end in a 500)."""
    return secret.encode("utf-8", "surrogateescape")


def _basic_password(encoded: str) -> str | None:
    # By hand: aiohttp's BasicAuth is deprecated (gone in aiohttp 4).
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # RFC 7617's historical default
    _, colon, password = text.partition(":")
    return password or None if colon else None


def admin_refusal(request: web.Request, settings: Settings) -> web.Response | None:
    """None when the request may use the admin surface, else the answer to send: 403 for a
    write a browser marks as cross-site, 421 for a foreign Host while the surface is open,
    401 without the admin key."""
    if request.method not in READS:
        refused = cross_site_refusal(request)
        if refused is not None:
            return refused
    expected = settings.admin_api_key
    if expected is None:  # development mode only: startup refuses production without a key
        return foreign_host_refusal(request, settings.allowed_hosts)
    given = presented_secret(request)
    if given is not None and hmac.compare_digest(
        secret_bytes(given), secret_bytes(expected.get_secret_value())
    ):
        return None
    body: dict[str, Any] = {
        "errors": [
            {
                "status": "401",
                "title": "Admin authentication required",
                "detail": "send the admin API key as 'Authorization: Bearer <key>' "
                "(or as the Basic-auth password)",
            }
        ]
    }
    return web.json_response(body, status=401, headers={"WWW-Authenticate": REALM})
