"""The HTTP app (aiohttp.web): producers' routes, admin routes, OAuth pages, status page,
OpenAPI and Prometheus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.api.app import make_app
    from app.api.jsonapi import pointer
    from app.api.openapi import document
    from app.api.prometheus import exposition
    from app.api.server import serve
    from app.api.status_page import render_destination
    from app.api.throttle import throttle_failed_auth

_EXPORTS = {
    "document": "app.api.openapi",
    "exposition": "app.api.prometheus",
    "make_app": "app.api.app",
    "pointer": "app.api.jsonapi",
    "render_destination": "app.api.status_page",
    "serve": "app.api.server",
    "throttle_failed_auth": "app.api.throttle",
}

__all__ = [
    "document",
    "exposition",
    "make_app",
    "pointer",
    "render_destination",
    "serve",
    "throttle_failed_auth",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
