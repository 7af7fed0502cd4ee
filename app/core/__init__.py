"""The foundation every part stands on: settings, Redis keys and defaults, Redis clients,
redaction of secrets, and the error tree. Imports nothing of the service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.core.errors import (
        DeliveryError,
        Permanent,
        RateLimited,
        Retryable,
        StoreFault,
        StoreUnavailable,
        Unauthorized,
        UnknownDestination,
        store_error,
        unreachable,
    )
    from app.core.keys import (
        BULK_ITEMS_PAGE,
        BULK_MAX_BATCH_FAILURES,
        BULK_PER_RECORD_OFF_S,
        BULK_PER_RECORD_SHARE,
        DEFAULT_RATE_LIMIT,
        METRICS_RETENTION_HOURS,
        RECENT_FAILURES_KEPT,
        Keys,
    )
    from app.core.operations import Commands, Eval, Op, Pipeline, run_async, run_sync
    from app.core.redaction import (
        FILTERED,
        SECRET_KEY,
        redact_text,
        remember_secret,
        remember_secrets,
        scrub,
    )
    from app.core.redis_client import (
        async_client,
        broker_transport_options,
        broker_url,
        limits_storage,
        limits_storage_uri,
        sync_client,
    )
    from app.core.scripts import LuaScripts, package_scripts
    from app.core.settings import Settings, SettingsError, get_settings, load_settings
    from app.core.wake import queue_wake

_EXPORTS = {
    "BULK_ITEMS_PAGE": "app.core.keys",
    "BULK_MAX_BATCH_FAILURES": "app.core.keys",
    "BULK_PER_RECORD_OFF_S": "app.core.keys",
    "BULK_PER_RECORD_SHARE": "app.core.keys",
    "Commands": "app.core.operations",
    "DEFAULT_RATE_LIMIT": "app.core.keys",
    "DeliveryError": "app.core.errors",
    "Eval": "app.core.operations",
    "FILTERED": "app.core.redaction",
    "Keys": "app.core.keys",
    "LuaScripts": "app.core.scripts",
    "METRICS_RETENTION_HOURS": "app.core.keys",
    "Op": "app.core.operations",
    "Permanent": "app.core.errors",
    "Pipeline": "app.core.operations",
    "RECENT_FAILURES_KEPT": "app.core.keys",
    "RateLimited": "app.core.errors",
    "Retryable": "app.core.errors",
    "SECRET_KEY": "app.core.redaction",
    "Settings": "app.core.settings",
    "SettingsError": "app.core.settings",
    "StoreFault": "app.core.errors",
    "StoreUnavailable": "app.core.errors",
    "store_error": "app.core.errors",
    "unreachable": "app.core.errors",
    "Unauthorized": "app.core.errors",
    "UnknownDestination": "app.core.errors",
    "async_client": "app.core.redis_client",
    "broker_transport_options": "app.core.redis_client",
    "broker_url": "app.core.redis_client",
    "get_settings": "app.core.settings",
    "limits_storage": "app.core.redis_client",
    "limits_storage_uri": "app.core.redis_client",
    "load_settings": "app.core.settings",
    "package_scripts": "app.core.scripts",
    "queue_wake": "app.core.wake",
    "redact_text": "app.core.redaction",
    "remember_secret": "app.core.redaction",
    "remember_secrets": "app.core.redaction",
    "run_async": "app.core.operations",
    "run_sync": "app.core.operations",
    "scrub": "app.core.redaction",
    "sync_client": "app.core.redis_client",
}

__all__ = [
    "BULK_ITEMS_PAGE",
    "BULK_MAX_BATCH_FAILURES",
    "BULK_PER_RECORD_OFF_S",
    "BULK_PER_RECORD_SHARE",
    "DEFAULT_RATE_LIMIT",
    "FILTERED",
    "METRICS_RETENTION_HOURS",
    "RECENT_FAILURES_KEPT",
    "SECRET_KEY",
    "Commands",
    "DeliveryError",
    "Eval",
    "Keys",
    "LuaScripts",
    "Op",
    "Permanent",
    "Pipeline",
    "RateLimited",
    "Retryable",
    "Settings",
    "SettingsError",
    "StoreFault",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownDestination",
    "async_client",
    "broker_transport_options",
    "broker_url",
    "get_settings",
    "limits_storage",
    "limits_storage_uri",
    "load_settings",
    "package_scripts",
    "queue_wake",
    "redact_text",
    "remember_secret",
    "remember_secrets",
    "run_async",
    "run_sync",
    "scrub",
    "store_error",
    "sync_client",
    "unreachable",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
