"""Changing the service at run time: destinations one at a time, producer keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.admin.destinations import Conflict, DestinationAdmin, Invalid, NotFound
    from app.admin.producer_keys import KeyRefused, ProducerKey, ProducerKeys

_EXPORTS = {
    "Conflict": "app.admin.destinations",
    "DestinationAdmin": "app.admin.destinations",
    "Invalid": "app.admin.destinations",
    "KeyRefused": "app.admin.producer_keys",
    "NotFound": "app.admin.destinations",
    "ProducerKey": "app.admin.producer_keys",
    "ProducerKeys": "app.admin.producer_keys",
}

__all__ = [
    "Conflict",
    "DestinationAdmin",
    "Invalid",
    "KeyRefused",
    "NotFound",
    "ProducerKey",
    "ProducerKeys",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
