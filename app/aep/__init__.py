"""Adobe Experience Platform: the Destination SDK package and a renderer for its templates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.aep.pebble import PebbleTemplate, render_request

_EXPORTS = {
    "PebbleTemplate": "app.aep.pebble",
    "render_request": "app.aep.pebble",
}

__all__ = [
    "PebbleTemplate",
    "render_request",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
