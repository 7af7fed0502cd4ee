"""The one way in: validate producers' profiles and record the changes they ask for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.ingest.batch import (
        DOCUMENT_TYPES,
        LINES_TYPES,
        THREAD_ABOVE_PROFILES,
        MalformedDocument,
        evaluate_batch,
        ingest_async,
        ingest_sync,
        read_profiles,
    )
    from app.ingest.producer import (
        FIRST_WAIT_S,
        MAX_WAIT_S,
        Producer,
        send_patiently,
        transient_cause,
    )
    from app.ingest.profiles import (
        MAX_FUTURE_SKEW_MS,
        FieldChange,
        ProfileResult,
        evaluate_profile,
        parse_time,
    )
    from app.ingest.report import Batch, IngestReport

_EXPORTS = {
    "Batch": "app.ingest.report",
    "DOCUMENT_TYPES": "app.ingest.batch",
    "FIRST_WAIT_S": "app.ingest.producer",
    "FieldChange": "app.ingest.profiles",
    "IngestReport": "app.ingest.report",
    "LINES_TYPES": "app.ingest.batch",
    "MAX_FUTURE_SKEW_MS": "app.ingest.profiles",
    "MAX_WAIT_S": "app.ingest.producer",
    "MalformedDocument": "app.ingest.batch",
    "Producer": "app.ingest.producer",
    "ProfileResult": "app.ingest.profiles",
    "THREAD_ABOVE_PROFILES": "app.ingest.batch",
    "evaluate_batch": "app.ingest.batch",
    "evaluate_profile": "app.ingest.profiles",
    "ingest_async": "app.ingest.batch",
    "ingest_sync": "app.ingest.batch",
    "parse_time": "app.ingest.profiles",
    "read_profiles": "app.ingest.batch",
    "send_patiently": "app.ingest.producer",
    "transient_cause": "app.ingest.producer",
}

__all__ = [
    "DOCUMENT_TYPES",
    "FIRST_WAIT_S",
    "LINES_TYPES",
    "MAX_FUTURE_SKEW_MS",
    "MAX_WAIT_S",
    "THREAD_ABOVE_PROFILES",
    "Batch",
    "FieldChange",
    "IngestReport",
    "MalformedDocument",
    "Producer",
    "ProfileResult",
    "evaluate_batch",
    "evaluate_profile",
    "ingest_async",
    "ingest_sync",
    "parse_time",
    "read_profiles",
    "send_patiently",
    "transient_cause",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
