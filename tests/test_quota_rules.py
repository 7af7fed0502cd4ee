"""The quota gate's rules that need no Redis: which limit governs a user, the careful reserve,
and the one JSON argument each quota script takes. The decisions the scripts make against
the shared state are proven on real Redis (test_ratelimit) and end to end
(test_rate_limit_e2e)."""

from __future__ import annotations

import json

import pytest

from app.ratelimit.governing import QuotaLimits, careful_reserve, quota_limits
from app.ratelimit.scripts import ObserveArgs, RefundArgs, encode


@pytest.mark.parametrize(
    ("configured", "reported", "expected"),
    [
        # Outreach's lower limit governs, and sizes the careful reserve.
        (1_000_000, 10_000, QuotaLimits(1_000_000, 10_000, 10_000, "reported", 1_000)),
        (10_000, 10_000, QuotaLimits(10_000, 10_000, 10_000, "reported", 1_000)),
        # A configured limit below Outreach's caps spending; the reserve is still Outreach's.
        (5_000, 10_000, QuotaLimits(5_000, 10_000, 5_000, "configured", 1_000)),
        # Nothing reported: the configured limit alone.
        (10_000, None, QuotaLimits(10_000, None, 10_000, "configured", 1_000)),
    ],
)
def test_the_lower_limit_governs_and_the_reserve_follows_outreachs(
    configured: int, reported: int | None, expected: QuotaLimits
) -> None:
    assert quota_limits(configured, reported) == expected


def test_the_careful_reserve_is_a_tenth_and_at_least_three() -> None:
    assert [careful_reserve(n) for n in (1, 20, 30, 31, 10_000)] == [3, 3, 3, 4, 1_000]


def test_script_arguments_leave_out_what_was_not_reported() -> None:
    doc = json.loads(encode(ObserveArgs(now_s=1.5, reset_s=2.0, tolerance_s=1.0, hold_ms=9)))
    assert doc == {
        "now_s": 1.5,
        "reset_s": 2.0,
        "tolerance_s": 1.0,
        "hold_ms": 9,
        "answered": False,
        "grant": "",
    }  # Lua reads the absent remaining, limit, pause and sent as nil


def test_script_arguments_keep_epoch_precision_and_booleans() -> None:
    now = 1_764_766_933.123456
    doc = json.loads(encode(ObserveArgs(now_s=now, reset_s=now, tolerance_s=1.0, hold_ms=1)))
    assert doc["now_s"] == now
    assert json.loads(encode(RefundArgs("g", 2, True, 5)))["probe"] is True
