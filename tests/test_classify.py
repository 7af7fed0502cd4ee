"""Every Outreach answer is parsed once (outreach/answers.py) into one value that maps to one
error class and carries what the quota gate reads: pure and without HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.outreach.answers import Answer, parse_answer
from app.outreach.answers import classify as classify_answer
from app.outreach.signals import ServerBudget

NOW = 1_800_000_000.0


def body(*errors: dict[str, object]) -> str:
    return json.dumps({"errors": list(errors)})


def classify(
    status: int, headers: dict[str, str], text: str, **parse: float
) -> DeliveryError | None:
    """The error class of an answer, parsed as the drain parses it."""
    return classify_answer(parse_answer(status, headers, text, **parse))


@pytest.mark.parametrize("status", [200, 201, 204])
def test_success_is_no_error(status: int) -> None:
    assert classify(status, {}, "", now_s=NOW) is None


def test_429_carries_the_reset_outreach_named() -> None:
    err = classify(429, {"X-RateLimit-Reset": str(int(NOW) + 30)}, "", now_s=NOW)
    assert isinstance(err, RateLimited) and err.reset_s == NOW + 30


def test_429_with_only_the_message_uses_its_time() -> None:
    text = body({"id": "rateLimitExceeded", "detail": "please try again at 2027-01-15T08:00:20."})
    err = classify(429, {}, text, now_s=NOW)
    assert isinstance(err, RateLimited) and err.reset_s == NOW + 20


def test_429_with_nothing_pauses_cautiously() -> None:
    err = classify(429, {}, "", now_s=NOW, fallback_pause_s=90)
    assert isinstance(err, RateLimited) and err.reset_s == NOW + 90


def test_401_asks_for_a_refresh() -> None:
    assert isinstance(classify(401, {}, body({"title": "Unauthorized"}), now_s=NOW), Unauthorized)


@pytest.mark.parametrize(
    ("status", "error_id"),
    [
        (400, None),
        (403, "unauthorizedOauthScope"),
        (404, "resourceNotFound"),
        (415, "unsupportedMediaType"),
        (422, "validationError"),
    ],
)
def test_client_errors_are_permanent_with_outreachs_reason(
    status: int, error_id: str | None
) -> None:
    text = body(
        {
            "id": error_id,
            "title": "Refused",
            "details": "the value is not allowed",  # one documented spelling
            "source": {"pointer": "/data/attributes/custom4"},
        }
    )
    err = classify(status, {}, text, now_s=NOW)
    assert isinstance(err, Permanent)
    assert (err.status, err.error_id, err.title) == (status, error_id, "Refused")
    assert err.detail == "the value is not allowed"
    assert err.pointers == ("/data/attributes/custom4",)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_are_transient(status: int) -> None:
    err = classify(status, {}, "<html>bad gateway</html>", now_s=NOW)
    assert isinstance(err, Retryable) and err.after_s is None
    assert "bad gateway" in err.detail


def test_maintenance_honours_its_try_again_time() -> None:
    text = body(
        {
            "id": "scheduledServerMaintenance",
            "detail": "Down for maintenance; please try again at 2027-01-15T08:05:00.",
        }
    )
    err = classify(503, {}, text, now_s=NOW)
    assert isinstance(err, Retryable) and err.after_s == 300


@pytest.mark.parametrize(
    ("header", "after_s"),
    [("120", 120.0), ("Fri, 15 Jan 2027 08:02:00 GMT", 120.0), ("soon", None)],
)
def test_a_5xx_retry_after_header_is_honoured(header: str, after_s: float | None) -> None:
    now = datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()
    err = classify(503, {"Retry-After": header}, "busy", now_s=now)
    assert isinstance(err, Retryable) and err.after_s == after_s


def test_one_parse_carries_what_the_gate_and_the_error_read() -> None:
    headers = {
        "X-RateLimit-Limit": "10000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(NOW) + 30),
    }
    text = body({"id": "rateLimitExceeded", "detail": "You have exceeded your limit."})
    answer = parse_answer(429, headers, text, now_s=NOW)
    assert answer == Answer(
        status=429,
        received_s=NOW,
        detail="You have exceeded your limit.",
        errors=answer.errors,
        budget=ServerBudget(limit=10000, remaining=0, reset_s=NOW + 30),
        resume_s=NOW + 30,
    )
    assert answer.errors[0].id == "rateLimitExceeded" and answer.answered
    err = classify_answer(answer)
    assert isinstance(err, RateLimited) and err.reset_s == answer.resume_s


def test_no_answer_is_not_answered_and_reads_as_nothing() -> None:
    answer = parse_answer(0, {}, None, now_s=NOW)
    assert not answer.answered and answer.budget is None and answer.resume_s is None
