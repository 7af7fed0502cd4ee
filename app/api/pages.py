"""The small HTML pages a browser gets from the API (OAuth steps, errors on page routes)."""

from __future__ import annotations

import html

from aiohttp import web


def page(
    status: int, title: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """A small HTML page; ``message`` is escaped."""
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    headers = {"Cache-Control": "no-store", **(headers or {})}
    return web.Response(status=status, text=body, content_type="text/html", headers=headers)
