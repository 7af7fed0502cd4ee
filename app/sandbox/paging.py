"""Cursor paging as Outreach does it: `page[size]`, `page[after]`, `links.next` until the end."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from app.sandbox.config import SandboxConfig
from app.sandbox.errors import bad_request

DEFAULT_PAGE_SIZE = 50
_T = TypeVar("_T")


def paginate(
    items: Sequence[_T], key: Callable[[_T], int], request: web.Request, config: SandboxConfig
) -> tuple[list[_T], str | None]:
    """One page of `items` (sorted by the integer `key`) and the next page's URL, if any."""
    size = page_size(request.query, config)
    after = _after(request.query.get("page[after]"))
    keys = [key(item) for item in items]
    start = 0 if after is None else bisect_right(keys, after)
    page = list(items[start : start + size])
    if start + size >= len(items):
        return page, None
    cursor = _encode(key(page[-1]))
    url = request.url.update_query({"page[after]": cursor, "page[size]": str(size)})
    return page, str(url)


def page_size(query: Any, config: SandboxConfig) -> int:
    """`page[size]` (default 50), clamped to or refused above `page_size_max`."""
    raw = query.get("page[size]")
    if raw is None:
        return min(DEFAULT_PAGE_SIZE, config.page_size_max)
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise bad_request("page[size] must be a positive integer.")
    size = int(raw)
    if size > config.page_size_max and config.page_size_over_max == "refuse":
        raise bad_request(f"page[size] must be at most {config.page_size_max}.")
    return min(size, config.page_size_max)


def _encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def _after(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    kind, _, value = text.partition(":")
    if kind != "id" or not value.isdigit():
        raise bad_request("page[after] is not a cursor this API gave out.")
    return int(value)


def list_body(
    data: list[dict[str, Any]], next_url: str | None, count: int | None
) -> dict[str, Any]:
    """A list document: `data`, `links` (with `next` unless last), `meta.count` if asked."""
    body: dict[str, Any] = {"data": data, "links": {} if next_url is None else {"next": next_url}}
    if count is not None:
        body["meta"] = {"count": count}
    return body


def wants_count(query: Any) -> bool:
    """Whether the client asked for a total (`count=true`), as newer apps must."""
    return str(query.get("count", "")).lower() == "true"
