from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.outreach.signals import (
    ServerBudget,
    parse_budget,
    parse_reset,
    parse_try_again_at,
    reset_form,
)

NOW = 1_700_000_000.0
FALLBACK = 60.0
MESSAGE = "You have exceeded your permitted rate limit of 10,000; please try again at {}."


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _reset(headers: dict[str, str], body: str | None = None, status: int = 429) -> float | None:
    return parse_reset(status, headers, body, now_s=NOW, fallback_pause_s=FALLBACK)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-RateLimit-Reset": str(int(NOW) + 120)}, NOW + 120),
        ({"x-ratelimit-reset": str(int(NOW) + 5)}, NOW + 5),
        ({"X-RATELIMIT-RESET": "30"}, NOW + 30),
        ({"X-RateLimit-Reset": str((int(NOW) + 90) * 1000)}, NOW + 90),
        ({"Retry-After": "17"}, NOW + 17),
        ({"retry-after": " 3 "}, NOW + 3),
        ({"Retry-After": "Tue, 14 Nov 2023 22:15:20 GMT"}, NOW + 120),
    ],
)
def test_reset_from_headers(headers: dict[str, str], expected: float) -> None:
    # abs=: approx's default relative tolerance is about 30 minutes at today's epochs.
    assert _reset(headers) == pytest.approx(expected, abs=1e-6)


def test_reset_header_wins_over_retry_after_and_body() -> None:
    headers = {"Retry-After": "10", "X-RateLimit-Reset": str(int(NOW) + 40)}
    body = MESSAGE.format("2023-11-14T23:00:00")
    assert _reset(headers, body) == NOW + 40
    assert _reset({"Retry-After": "10"}, body) == NOW + 10


@pytest.mark.parametrize(
    "stamp",
    [
        "2023-11-14T22:20:00",
        "2023-11-14T22:20:00.250",
        "2023-11-14T22:20:00.123456789",
        "2023-11-14T22:20:00Z",
        "2023-11-14 22:20:00",
    ],
)
def test_reset_from_message(stamp: str) -> None:
    body = '{"errors":[{"id":"rateLimitExceeded","detail":"' + MESSAGE.format(stamp) + '"}]}'
    expected = _epoch(stamp.rstrip("Z")[:26])
    assert _reset({}, body) == pytest.approx(expected, abs=1e-6)
    assert expected > NOW


def test_message_with_zone_offset() -> None:
    body = MESSAGE.format("2023-11-15T00:20:00+02:00")
    assert _reset({}, body) == _epoch("2023-11-14T22:20:00")


def test_message_time_keeps_its_fraction_and_drops_the_trailing_dot() -> None:
    assert parse_try_again_at(MESSAGE.format("2023-11-14T22:20:00.5")) == _epoch(
        "2023-11-14T22:20:00.5"
    )
    assert parse_try_again_at("please try again at 2023-11-14T22:20:00.") == _epoch(
        "2023-11-14T22:20:00"
    )


def test_maintenance_body_is_parsed_by_the_shared_helper() -> None:
    body = "Scheduled maintenance; please try again at 2030-01-01T00:00:00."
    assert parse_try_again_at(body) == _epoch("2030-01-01T00:00:00")
    assert parse_try_again_at("Retry later") is None
    assert parse_try_again_at("please try again at noon") is None


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, None),
        ({}, "Retry later"),
        ({"X-RateLimit-Reset": "soon", "Retry-After": "never"}, ""),
        ({"Retry-After": "-5"}, None),
    ],
)
def test_nothing_usable_falls_back(headers: dict[str, str], body: str | None) -> None:
    assert _reset(headers, body) == NOW + FALLBACK


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-RateLimit-Reset": str(int(NOW) - 100)}, None),
        ({"Retry-After": "Tue, 14 Nov 2000 22:15:20 GMT"}, None),
        ({}, MESSAGE.format("2017-01-01T00:00:00")),
    ],
)
def test_past_times_are_clamped_to_now(headers: dict[str, str], body: str | None) -> None:
    assert _reset(headers, body) == NOW


@pytest.mark.parametrize("status", [200, 404, 500, 503])
def test_not_a_429_has_no_reset(status: int) -> None:
    headers = {"X-RateLimit-Reset": str(int(NOW) + 5), "Retry-After": "5"}
    assert _reset(headers, MESSAGE.format("2030-01-01T00:00:00"), status=status) is None


def test_budget_from_all_headers() -> None:
    headers = {
        "X-RateLimit-Limit": "10000",
        "x-ratelimit-remaining": "9876",
        "X-RateLimit-Reset": str(int(NOW) + 600),
    }
    assert parse_budget(headers, now_s=NOW) == ServerBudget(10000, 9876, NOW + 600)


def test_budget_from_a_subset_and_a_delta_reset() -> None:
    assert parse_budget({"X-RateLimit-Remaining": "7"}, now_s=NOW) == ServerBudget(None, 7, None)
    assert parse_budget({"X-RateLimit-Reset": "12"}, now_s=NOW) == ServerBudget(
        None, None, NOW + 12
    )


def test_budget_absent_or_garbage_is_none() -> None:
    assert parse_budget({"Content-Type": "application/vnd.api+json"}, now_s=NOW) is None
    assert parse_budget({"X-RateLimit-Remaining": "many"}, now_s=NOW) is None


def test_budget_dataclass_is_frozen() -> None:
    budget = ServerBudget(1, 2, 3.0)
    with pytest.raises(AttributeError):
        budget.remaining = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "form", "epoch"),
    [
        ("30", "delta s", NOW + 30),
        (str(int(NOW) + 60), "epoch s", NOW + 60),
        (str((int(NOW) + 60) * 1000), "epoch ms", NOW + 60),
        ("2023-11-14T22:15:00Z", "ISO 8601", NOW + 100),
        ("2023-11-14T22:15:00", "ISO 8601", NOW + 100),  # no zone: UTC, like "try again at"
        ("2023-11-14T23:15:00+01:00", "ISO 8601", NOW + 100),
        ("Tue, 14 Nov 2023 22:15:00 GMT", "HTTP date", NOW + 100),
        ("soon", None, None),
    ],
)
def test_a_reset_is_read_in_every_plausible_form(
    raw: str, form: str | None, epoch: float | None
) -> None:
    assert reset_form(raw) == form
    budget = parse_budget({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": raw}, now_s=NOW)
    expected = None if epoch is None else pytest.approx(epoch, abs=1e-6)
    assert budget is not None and budget.reset_s == expected
    assert _reset({"X-RateLimit-Reset": raw}) == pytest.approx(epoch or NOW + FALLBACK, abs=1e-6)
