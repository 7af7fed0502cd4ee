"""``GET /docs/aep``: the AEP guide (docs/aep.md), which the Destination SDK package names as
its documentation link, so the link AEP shows its users answers wherever the API runs."""

from __future__ import annotations

from aiohttp import web

from app.aep import package

#: Browsers show text/plain; a client asking for Markdown by name gets it so labelled.
MARKDOWN = "text/markdown"


async def serve_guide(request: web.Request) -> web.Response:
    wants_markdown = MARKDOWN in request.headers.get("Accept", "")
    return web.Response(
        text=package.guide(),
        content_type=MARKDOWN if wants_markdown else "text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Vary": "Accept"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(package.DOCS_PATH, serve_guide)
