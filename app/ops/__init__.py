"""What operators see: status documents, alert rules and their runner, logs, Sentry, and the
start-up checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.ops.alert_runner import AlertLoop, Evaluator, Lease, Webhook
    from app.ops.alerts import Snapshot, Window, conditions, snapshot_from_status
    from app.ops.logs import configure_logging, resolve_format
    from app.ops.sentry import init_sentry, scrub_event
    from app.ops.startup import StartupRefused, check_startup, exposure_problems, startup_problems
    from app.ops.status import BadQuery, collect_status, destination_status, parse_hours
    from app.ops.status_doc import (
        AudienceRow,
        DestinationStatus,
        Failure,
        HourFlow,
        Quota,
        governing,
    )
    from app.ops.status_table import duration, render_table

_EXPORTS = {
    "AlertLoop": "app.ops.alert_runner",
    "AudienceRow": "app.ops.status_doc",
    "BadQuery": "app.ops.status",
    "DestinationStatus": "app.ops.status_doc",
    "Evaluator": "app.ops.alert_runner",
    "Failure": "app.ops.status_doc",
    "HourFlow": "app.ops.status_doc",
    "Lease": "app.ops.alert_runner",
    "Quota": "app.ops.status_doc",
    "Snapshot": "app.ops.alerts",
    "StartupRefused": "app.ops.startup",
    "Webhook": "app.ops.alert_runner",
    "Window": "app.ops.alerts",
    "check_startup": "app.ops.startup",
    "collect_status": "app.ops.status",
    "conditions": "app.ops.alerts",
    "configure_logging": "app.ops.logs",
    "destination_status": "app.ops.status",
    "duration": "app.ops.status_table",
    "exposure_problems": "app.ops.startup",
    "governing": "app.ops.status_doc",
    "init_sentry": "app.ops.sentry",
    "parse_hours": "app.ops.status",
    "render_table": "app.ops.status_table",
    "resolve_format": "app.ops.logs",
    "scrub_event": "app.ops.sentry",
    "snapshot_from_status": "app.ops.alerts",
    "startup_problems": "app.ops.startup",
}

__all__ = [
    "AlertLoop",
    "AudienceRow",
    "BadQuery",
    "DestinationStatus",
    "Evaluator",
    "Failure",
    "HourFlow",
    "Lease",
    "Quota",
    "Snapshot",
    "StartupRefused",
    "Webhook",
    "Window",
    "check_startup",
    "collect_status",
    "conditions",
    "configure_logging",
    "destination_status",
    "duration",
    "exposure_problems",
    "governing",
    "init_sentry",
    "parse_hours",
    "render_table",
    "resolve_format",
    "scrub_event",
    "snapshot_from_status",
    "startup_problems",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
