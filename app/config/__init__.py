"""Destination and connection configuration: the models, their validation, the file format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.config.destinations import (
        STATUSES,
        Config,
        ConfigError,
        Connection,
        Destination,
        Loc,
        Status,
        UnknownIdError,
        describe_error,
        destination_conflicts,
        format_loc,
        load_config,
        parse_config,
    )

_EXPORTS = {
    "Config": "app.config.destinations",
    "ConfigError": "app.config.destinations",
    "Connection": "app.config.destinations",
    "Destination": "app.config.destinations",
    "Loc": "app.config.destinations",
    "STATUSES": "app.config.destinations",
    "Status": "app.config.destinations",
    "UnknownIdError": "app.config.destinations",
    "describe_error": "app.config.destinations",
    "destination_conflicts": "app.config.destinations",
    "format_loc": "app.config.destinations",
    "load_config": "app.config.destinations",
    "parse_config": "app.config.destinations",
}

__all__ = [
    "STATUSES",
    "Config",
    "ConfigError",
    "Connection",
    "Destination",
    "Loc",
    "Status",
    "UnknownIdError",
    "describe_error",
    "destination_conflicts",
    "format_loc",
    "load_config",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
