"""Logging for the API, the workers and the CLI: JSON lines for machines, text for people.

``LOG_FORMAT=json`` writes one object per line — ``ts``, ``level``, ``logger``, ``message``,
``exc_type``/``exc`` and every ``extra=`` field (``destination``, ``connection``, …);
``text`` is the classic one-line form; ``auto`` picks json unless stderr is a terminal.
Either way a filter redacts tokens, API keys and e-mail addresses first (defense in depth:
nothing should log them in the first place).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from app.core.redaction import FILTERED, SECRET_KEY, redact_text, remember_secrets, scrub
from app.core.settings import Settings

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Replaces the record's message (with its arguments applied) by its redacted form."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                secret = SECRET_KEY.match(key)
                if key == "data" and record.name.startswith("celery"):
                    value = _without_task_arguments(value)
                doc[key] = FILTERED if secret else scrub(_plain(value), pii_keys=False)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = redact_text(record.exc_text)
        if record.stack_info:
            doc["stack"] = redact_text(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return redact_text(super().formatException(ei))


def _without_task_arguments(data: Any) -> Any:
    """Celery logs each task received and done at INFO with its arguments in ``extra["data"]``:
    an ingest task's arguments are profiles (names, e-mails, phone numbers, …), which no
    pattern can fully redact. They are left out; the task's name and id stay."""
    if not isinstance(data, dict):
        return data
    return {k: (FILTERED if k in ("args", "kwargs") else v) for k, v in data.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool | type(None) | dict | list | tuple):
        return value
    return str(value)


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``json`` or ``text`` (``auto``: json unless ``stream`` is a terminal)."""
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(
    settings: Settings, *, level: int | str | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Route the root logger to one handler on ``stream`` (stderr) in the configured format;
    calling it again replaces that handler. Returns it."""
    remember_secrets(settings)
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.set_name("outreach-sync")
    fmt = resolve_format(settings.log_format, out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "outreach-sync"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level is not None else settings.log_level)
    logging.captureWarnings(True)  # warnings are records too: one format on stderr
    return handler
