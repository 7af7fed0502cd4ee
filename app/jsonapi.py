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


def pointer(loc: Sequence[int | str]) -> str:
    """``("audiences", "a/b")`` -> ``/audiences/a~1b`` (RFC 6901 escaping)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)
