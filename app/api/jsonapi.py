"""JSON:API-style error answers shared by the producers' and the admin routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web


def error_object(
    status: int, title: str, detail: str, *, pointer: str | None = None
) -> dict[str, Any]:
    """One member of ``errors``; ``pointer`` is an RFC 6901 JSON Pointer into the request body."""
    err: dict[str, Any] = {"status": str(status), "title": title, "detail": detail}
    if pointer is not None:
        err["source"] = {"pointer": pointer}
    return err


def errors_response(
    status: int,
    errors: Sequence[dict[str, Any]],
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.json_response({"errors": list(errors)}, status=status, headers=headers)


def error_response(
    status: int,
    title: str,
    detail: str,
    *,
    pointer: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An answer carrying one error."""
    return errors_response(
        status, [error_object(status, title, detail, pointer=pointer)], headers=headers
    )


#: Seconds a client is told to wait when Redis cannot be reached.
STORE_RETRY_AFTER_S = 5


def store_unavailable(detail: str) -> web.Response:
    """503 with ``Retry-After``: Redis cannot be reached; the client should send again."""
    headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
    return error_response(503, "Store unavailable", detail, headers=headers)


#: Media types a JSON request body is accepted as (RFC 7396's for a JSON Merge Patch).
JSON_TYPES = ("application/json", "application/merge-patch+json")


def unsupported_media_type(request: web.Request) -> web.Response | None:
    """None when the request declares a JSON body, else the 415 answer. A cross-site HTML
    form can only send form encodings or ``text/plain`` (anything else needs a CORS
    preflight we never grant), so this also keeps such a form, riding on a browser's cached
    Basic-auth credentials, away from the admin writes."""
    if request.content_type in JSON_TYPES:
        return None
    given = request.headers.get("Content-Type")
    return error_response(
        415,
        "Unsupported media type",
        "send the body as 'Content-Type: application/json' "
        f"({'got ' + repr(given) if given else 'no Content-Type was sent'})",
    )


def pointer(loc: Sequence[int | str]) -> str:
    """``("audiences", "a/b")`` -> ``/audiences/a~1b`` (RFC 6901 escaping)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)
