"""Outreach's answers, parsed once into one typed value (`Answer`) that the quota gate and
the error classes both read: pure, testable without HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.outreach.signals import (
    ServerBudget,
    parse_budget,
    parse_reset,
    parse_try_again_at,
    retry_after_at,
)

PERMANENT = frozenset({400, 403, 404, 405, 409, 413, 415, 422})


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One entry of a JSON:API ``errors`` list."""

    id: str | None
    title: str | None
    detail: str
    pointer: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """One Outreach answer with everything read from it; ``status`` 0: none came (the
    connection failed or timed out). Times are epoch seconds.

    ``budget``: the ``X-RateLimit-*`` headers. ``resume_s`` (429 only): when sending may
    resume, from ``X-RateLimit-Reset``, ``Retry-After``, the body's "try again at", else the
    fallback pause. ``retry_at_s`` (other failures): the body's "try again at", else
    ``Retry-After``.
    """

    status: int
    received_s: float
    detail: str = ""
    errors: tuple[ErrorEntry, ...] = ()
    budget: ServerBudget | None = None
    resume_s: float | None = None
    retry_at_s: float | None = None

    @property
    def answered(self) -> bool:
        """Outreach answered (a transport failure did not)."""
        return self.status > 0

    @property
    def pointers(self) -> tuple[str, ...]:
        """The ``source.pointer`` of each error that has one."""
        return tuple(e.pointer for e in self.errors if e.pointer)


def no_answer(*, now_s: float | None = None) -> Answer:
    """The answer to a request that got none."""
    return Answer(0, time.time() if now_s is None else now_s)


def parse_answer(
    status: int,
    headers: Mapping[str, str],
    body: str | None,
    *,
    fallback_pause_s: float = 60.0,
    now_s: float | None = None,
) -> Answer:
    """Read an answer once: its errors, its rate-limit headers and when to come back."""
    now = time.time() if now_s is None else now_s
    text = body or ""
    errors = _errors(text)
    retry_at = None
    if not 200 <= status < 300 and status not in (401, 429) and status not in PERMANENT:
        # A 5xx may say when to come back: in its body ("try again at") or a Retry-After.
        retry_at = parse_try_again_at(text)
        if retry_at is None:
            retry_at = retry_after_at(
                next((v for k, v in headers.items() if k.lower() == "retry-after"), None), now
            )
    return Answer(
        status=status,
        received_s=now,
        detail=_detail(errors, text),
        errors=errors,
        budget=parse_budget(headers, now_s=now),
        resume_s=parse_reset(status, headers, body, now_s=now, fallback_pause_s=fallback_pause_s),
        retry_at_s=retry_at,
    )


def classify(answer: Answer) -> DeliveryError | None:
    """None for success, else the error describing what the caller must do."""
    status = answer.status
    if 200 <= status < 300:
        return None
    if status == 429:
        # parse_reset always names a time for a 429 (the fallback pause at the latest).
        resume = answer.resume_s if answer.resume_s is not None else answer.received_s
        return RateLimited(status, answer.detail, reset_s=resume)
    if status == 401:
        return Unauthorized(status, answer.detail)
    if status in PERMANENT:
        first = answer.errors[0] if answer.errors else ErrorEntry(None, None, "", None)
        return Permanent(
            status, answer.detail, error_id=first.id, title=first.title, pointers=answer.pointers
        )
    at = answer.retry_at_s
    after = None if at is None else max(0.0, at - answer.received_s)
    return Retryable(status, answer.detail, after_s=after)


def _errors(body: str) -> tuple[ErrorEntry, ...]:
    try:
        doc = json.loads(body)
    except ValueError:
        return ()
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errs, list):
        return ()
    return tuple(_entry(e) for e in errs if isinstance(e, dict))


def _entry(err: dict[str, Any]) -> ErrorEntry:
    source = err.get("source")
    pointer = source.get("pointer") if isinstance(source, dict) else None
    # One documented example spells it "details".
    detail = err.get("detail") or err.get("details") or err.get("title") or ""
    return ErrorEntry(
        id=_opt_str(err.get("id")),
        title=_opt_str(err.get("title")),
        detail=str(detail),
        pointer=str(pointer) if pointer else None,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _detail(errors: tuple[ErrorEntry, ...], body: str) -> str:
    if not errors:
        return body[:300]
    return "; ".join(e.detail for e in errors)
