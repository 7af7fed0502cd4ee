"""Outreach's answers turned into what to do: one place, pure, testable without HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.outreach.signals import parse_reset, parse_try_again_at, retry_after_at

PERMANENT = frozenset({400, 403, 404, 405, 409, 413, 415, 422})


def _errors(body: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    errs = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def _detail(errs: list[dict[str, Any]], body: str) -> str:
    if not errs:
        return body[:300]
    # One documented example spells it "details".
    return "; ".join(str(e.get("detail") or e.get("details") or e.get("title") or "") for e in errs)


def classify(
    status: int,
    headers: Mapping[str, str],
    body: str,
    *,
    fallback_pause_s: float = 60.0,
    now_s: float | None = None,
) -> DeliveryError | None:
    """None for success, else the error describing what the caller must do."""
    if 200 <= status < 300:
        return None
    now = time.time() if now_s is None else now_s
    errs = _errors(body)
    detail = _detail(errs, body)
    if status == 429:
        reset = parse_reset(status, headers, body, now_s=now, fallback_pause_s=fallback_pause_s)
        return RateLimited(status, detail, reset_s=reset or now + fallback_pause_s)
    if status == 401:
        return Unauthorized(status, detail)
    if status in PERMANENT:
        first = errs[0] if errs else {}
        pointers = tuple(
            str(e["source"]["pointer"])
            for e in errs
            if isinstance(e.get("source"), dict) and e["source"].get("pointer")
        )
        return Permanent(
            status, detail, error_id=first.get("id"), title=first.get("title"), pointers=pointers
        )
    # A 5xx may say when to come back: in its body ("try again at") or a Retry-After header.
    at = parse_try_again_at(body)
    if at is None:
        at = retry_after_at(
            next((v for k, v in headers.items() if k.lower() == "retry-after"), None), now
        )
    return Retryable(status, detail, after_s=None if at is None else max(0.0, at - now))
