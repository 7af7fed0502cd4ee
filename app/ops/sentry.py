"""Sentry for the API and the workers, with nothing secret or personal in what it sends.

``init_sentry`` does nothing unless ``SENTRY_DSN`` is set. Events pass ``scrub_event`` on
their way out: request bodies, cookies and credential headers are dropped, local variables
and extras named like a prospect's data (``profile``, ``fields``, ``attributes``, ``customN``,
``email``, …) or a secret (``token``, ``secret``, ``api_key``, …) are replaced, and every
remaining string is redacted by shape (``Bearer …``, ``osk_…``, e-mail addresses, …).
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import sentry_sdk
from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.aiohttp import AioHttpIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
from sentry_sdk.transport import Transport

from app.core.redaction import FILTERED, SECRET_KEY, redact_text, remember_secrets, scrub
from app.core.settings import Settings

log = logging.getLogger(__name__)

#: Extra names Sentry's own scrubber removes wherever they appear in an event.
DENYLIST = [
    *DEFAULT_DENYLIST,
    "access_token",
    "refresh_token",
    "client_secret",
    "api_key",
    "x-api-key",
    "x_api_key",
    "token_encryption_key",
    "admin_api_key",
    "alert_webhook_url",
]


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry's ``before_send``: the event without secrets and prospect attributes."""
    if isinstance(req := event.get("request"), dict):
        event["request"] = _scrub_request(req)
    for exc in _values(event.get("exception")):
        if isinstance(exc.get("value"), str):
            exc["value"] = redact_text(exc["value"])
        _scrub_frames(exc.get("stacktrace"))
    for thread in _values(event.get("threads")):
        _scrub_frames(thread.get("stacktrace"))
    for crumb in _values(event.get("breadcrumbs")):
        scrub_breadcrumb(crumb)
    if "extra" in event:
        event["extra"] = scrub(event["extra"])
    # Whatever is left (messages, tags, contexts) keeps its structure; strings are redacted.
    return {
        k: v if k in ("request", "exception", "breadcrumbs") else scrub(v, pii_keys=False)
        for k, v in event.items()
    }


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry's ``before_breadcrumb``: log messages and HTTP data redacted."""
    if isinstance(crumb.get("message"), str):
        crumb["message"] = redact_text(crumb["message"])
    if isinstance(crumb.get("data"), dict):
        crumb["data"] = scrub(crumb["data"], pii_keys=False)
        for key in ("http.query", "http.fragment"):
            if key in crumb["data"]:
                crumb["data"][key] = FILTERED
    return crumb


def _values(container: Any) -> list[dict[str, Any]]:
    if isinstance(container, dict):
        container = container.get("values")
    return [v for v in container or [] if isinstance(v, dict)]


def _scrub_frames(stacktrace: Any) -> None:
    for frame in _values({"values": (stacktrace or {}).get("frames")}):
        if isinstance(frame.get("vars"), dict):
            frame["vars"] = scrub(frame["vars"])


def _scrub_request(req: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in req.items() if k not in ("data", "cookies", "env")}
    if "data" in req:
        clean["data"] = FILTERED
    headers = req.get("headers")
    if isinstance(headers, dict):
        clean["headers"] = {
            k: FILTERED if SECRET_KEY.match(k) else redact_text(str(v)) for k, v in headers.items()
        }
    for key in ("url", "query_string"):
        if isinstance(req.get(key), str):
            clean[key] = redact_text(req[key])
    return clean


def sentry_integrations(component: str) -> list[Integration]:
    integrations: list[Integration] = [
        AioHttpIntegration(),
        # Log records become breadcrumbs; ERROR records become events (both scrubbed).
        LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
    ]
    if component == "worker":
        from sentry_sdk.integrations.celery import CeleryIntegration

        integrations.append(CeleryIntegration(monitor_beat_tasks=False))
    return integrations


def _version() -> str:
    try:
        return metadata.version("outreach-sync")
    except metadata.PackageNotFoundError:
        return "unknown"


def init_sentry(settings: Settings, *, component: str, transport: Transport | None = None) -> bool:
    """Start reporting to Sentry when ``SENTRY_DSN`` is set; True when it did.
    ``component`` (``api``, ``worker``, ``cli``) becomes the ``component`` tag."""
    if not settings.sentry_dsn:
        return False
    remember_secrets(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        release=f"outreach-sync@{_version()}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        # send_default_pii stays unset, which is False (this SDK deprecates passing it).
        max_request_body_size="never",
        # Frame locals would carry prospects' attributes under any variable name (a claimed
        # batch, a PATCH body): names cannot be told apart, so none are sent.
        include_local_variables=False,
        event_scrubber=EventScrubber(denylist=DENYLIST, recursive=True),
        before_send=scrub_event,  # type: ignore[arg-type]
        before_send_transaction=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_breadcrumb,
        integrations=sentry_integrations(component),
        transport=transport,
    )
    sentry_sdk.set_tag("component", component)
    log.info("Sentry reporting on", extra={"component": component})
    return True
