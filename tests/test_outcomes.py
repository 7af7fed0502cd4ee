"""What a drain does after each answer, and its retry policy: pure rules run against an
in-memory store and an injected clock (no Redis, no sleeps). The real-Redis behaviour is in
test_drain_counts, test_delivery_safety and the end-to-end tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from app.config.destinations import Connection, Destination
from app.connections.oauth import AccessToken, RefreshOutcome
from app.core.errors import DeliveryError, Permanent, RateLimited, Retryable, Unauthorized
from app.core.settings import Settings
from app.delivery.lot import LeaseLost, Lot
from app.delivery.outcomes import Outcomes, RetryPolicy
from app.store.prospects import Claimed, Outcome

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000


class MemoryStore:
    """The calls settling makes, kept in lists (an `OutcomeStore`)."""

    def __init__(self) -> None:
        self.settled: list[tuple[int, Outcome, int, tuple[str, ...]]] = []
        self.holds: list[int] = []
        self.failures: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.invalid: set[int] = set()
        self.dropped: list[tuple[int, list[str]]] = []
        self.forgotten: list[tuple[int, list[str]]] = []

    async def settle(
        self,
        dest: str,
        prospect: int,
        token: str,
        outcome: Outcome,
        *,
        now_ms: int,
        window_ms: int,
        due_ms: int = 0,
        fields: Iterable[str] = (),
    ) -> bool:
        self.settled.append((prospect, outcome, due_ms, tuple(fields)))
        return True

    async def hold(self, dest: str, until_ms: int, *, now_ms: int) -> None:
        self.holds.append(until_ms)

    async def count(self, dest: str, **increments: int) -> None:
        self.counts.update(increments)

    async def failed_versions(self, dest: str, prospect: int, fields: list[str]) -> dict[str, int]:
        return {f: 1 for f in fields}

    async def mark_invalid_mapping(self, dest: str, mapping_id: int) -> bool:
        new = mapping_id not in self.invalid
        self.invalid.add(mapping_id)
        return new

    async def forget_delivered(self, dest: str, prospect: int, fields: Iterable[str]) -> None:
        self.forgotten.append((prospect, list(fields)))

    async def drop_inflight(self, dest: str, prospect: int, fields: Iterable[str]) -> None:
        self.dropped.append((prospect, list(fields)))

    async def record_failure(self, dest: str, failure_id: str, record: dict[str, Any]) -> None:
        self.failures.append(record)


class Refresher:
    def __init__(self, outcome: RefreshOutcome = RefreshOutcome.REFRESHED) -> None:
        self.outcome = outcome

    async def current(self, conn_id: str) -> AccessToken | None:
        return AccessToken(conn_id, "t", 1)

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        return self.outcome


SETTINGS = Settings(
    max_retry_age_s=3600, retry_backoff_base_s=2.0, retry_backoff_cap_s=60.0, reauth_hold_s=30
)
LOT = Lot(
    Destination(id="d", name="D", connection="c", coalesce_window_ms=0),
    Connection(id="c", user="u"),
    "claim-token",
)


def outcomes(store: MemoryStore, refresh: RefreshOutcome = RefreshOutcome.REFRESHED) -> Outcomes:
    policy = RetryPolicy.from_settings(SETTINGS, jitter=lambda: 1.0)
    return Outcomes(
        store=store,
        refresher=Refresher(refresh),
        settings=SETTINGS,
        policy=policy,
        clock_ms=lambda: NOW_MS,
    )


def claimed(*fields: str, attempts: int = 0, failing_since_ms: int = 0) -> Claimed:
    return Claimed(7, NOW_MS - 1000, attempts, {f: "v" for f in fields}, failing_since_ms)


async def apply(
    store: MemoryStore, c: Claimed, err: DeliveryError | None, **kw: Any
) -> Counter[str]:
    stats: Counter[str] = Counter()
    await outcomes(store, **kw).apply(LOT, c, err, stats)
    return stats


# The retry policy -------------------------------------------------------------------------


def test_backoff_doubles_per_attempt_up_to_the_cap_with_half_to_full_jitter() -> None:
    full = RetryPolicy(base_s=1.0, cap_s=10.0, jitter=lambda: 1.0)
    assert [full.backoff_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert full.backoff_s(10_000) == 10.0  # no overflow on a prospect failing for ages
    half = RetryPolicy(base_s=1.0, cap_s=10.0, jitter=lambda: 0.0)
    assert half.backoff_s(3) == 4.0


def test_the_policy_comes_from_the_settings() -> None:
    policy = RetryPolicy.from_settings(SETTINGS)
    assert (policy.base_s, policy.cap_s, policy.max_age_s) == (2.0, 60.0, 3600)
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy()  # the defaults agree


def test_the_retry_age_runs_from_the_first_failure_and_not_before_a_resume() -> None:
    policy = RetryPolicy(max_age_s=3600)
    old = NOW_MS - HOUR_MS - 1000
    assert policy.exhausted(now_ms=NOW_MS, failing_since_ms=old)
    assert not policy.exhausted(now_ms=NOW_MS, failing_since_ms=0)  # this is the first failure
    assert not policy.exhausted(now_ms=NOW_MS, failing_since_ms=old, resumed_ms=NOW_MS - 1000)


def test_outreach_asking_for_a_longer_wait_than_the_backoff_wins() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=10.0, jitter=lambda: 1.0)
    assert policy.retry_at_ms(now_ms=NOW_MS, attempts=0, after_s=30.0) == NOW_MS + 30_000
    assert policy.retry_at_ms(now_ms=NOW_MS, attempts=2, after_s=0.5) == NOW_MS + 4_000
    assert policy.retry_at_ms(now_ms=NOW_MS, attempts=2) == NOW_MS + 4_000


# Outcomes -----------------------------------------------------------------------------------


async def test_a_delivered_prospect_is_settled_ok_with_its_fields() -> None:
    store = MemoryStore()
    stats = await apply(store, claimed("custom1", "firstName"), None)
    assert store.settled == [(7, "ok", 0, ("custom1", "firstName"))]
    assert stats["delivered"] == 1


async def test_a_transient_failure_is_retried_after_its_backoff() -> None:
    store = MemoryStore()
    stats = await apply(store, claimed("custom1", attempts=3), Retryable(503, "down"))
    assert store.settled == [(7, "retry", NOW_MS + 16_000, ())]  # 2 s * 2**3, full jitter
    assert stats["error_retryable"] == 1 and not store.failures


async def test_a_transient_failure_past_the_retry_age_becomes_a_dead_letter() -> None:
    store = MemoryStore()
    c = claimed("custom4", attempts=9, failing_since_ms=NOW_MS - HOUR_MS - 1)
    await apply(store, c, Retryable(503, "down"))
    assert store.settled == [(7, "drop", 0, ())]
    [record] = store.failures
    assert record["reason"] == "retries_exhausted" and record["at_ms"] == NOW_MS
    assert record["mapping_ids"] == [4] and record["attempts"] == 10


async def test_a_429_holds_the_destination_and_defers_until_the_reset() -> None:
    store = MemoryStore()
    reset_s = NOW_MS / 1000 + 120
    await apply(store, claimed("custom1"), RateLimited(429, "slow", reset_s=reset_s))
    assert store.holds == [NOW_MS + 120_000]
    assert store.settled == [(7, "defer", NOW_MS + 120_000, ())]
    assert not store.failures  # waiting for quota is not a failure


async def test_a_refusal_naming_one_field_fails_only_that_field() -> None:
    store = MemoryStore()
    err = Permanent(422, "bad", pointers=("/data/attributes/custom4",))
    stats = await apply(store, claimed("custom4", "custom5"), err)
    [record] = store.failures
    assert record["fields"] == {"custom4": "v"} and record["reason"] == "http_422"
    assert store.settled == [(7, "defer", NOW_MS, ("custom4",))]  # custom5 goes again now
    assert stats["fields_isolated"] == 1


async def test_a_400_naming_a_custom_field_marks_its_mapping_id_invalid() -> None:
    store = MemoryStore()
    err = Permanent(400, "bad", pointers=("/data/attributes/custom9",))
    await apply(store, claimed("custom9"), err)
    assert store.invalid == {9}
    assert store.settled == [(7, "drop", 0, ())]


async def test_a_bad_request_naming_no_field_of_several_goes_to_the_bisection() -> None:
    store, bisected = MemoryStore(), []

    async def bisect(lot: Lot, c: Claimed, stats: Counter[str]) -> None:
        bisected.append(sorted(c.fields))

    stats: Counter[str] = Counter()
    err = Permanent(400, "bad request")
    await outcomes(store).apply(LOT, claimed("custom1", "custom2"), err, stats, bisect=bisect)
    assert bisected == [["custom1", "custom2"]] and not store.settled
    await outcomes(store).apply(LOT, claimed("custom1"), err, stats, bisect=bisect)
    assert bisected == [["custom1", "custom2"]]  # one field: nothing to split, it fails
    assert store.settled == [(7, "drop", 0, ())]


async def test_a_401_after_a_refresh_is_sent_again_at_once_a_few_times_only() -> None:
    store = MemoryStore()
    await apply(store, claimed("custom1", attempts=1), Unauthorized(401, "expired"))
    assert store.settled == [(7, "retry", NOW_MS, ())]
    store = MemoryStore()
    await apply(store, claimed("custom1", attempts=2), Unauthorized(401, "expired"))
    assert store.settled == [(7, "retry", NOW_MS + 8_000, ())]  # now with backoff


@pytest.mark.parametrize("refresh", [RefreshOutcome.REAUTH_REQUIRED, RefreshOutcome.UNAVAILABLE])
async def test_a_401_without_a_usable_token_waits_and_holds_the_destination(
    refresh: RefreshOutcome,
) -> None:
    store = MemoryStore()
    await apply(store, claimed("custom1"), Unauthorized(401, "revoked"), refresh=refresh)
    assert store.holds == [NOW_MS + 30_000]
    assert store.settled == [(7, "defer", NOW_MS + 30_000, ())] and not store.failures


async def test_a_lost_lease_is_left_to_the_drain_that_took_the_prospect_over() -> None:
    store = MemoryStore()
    stats = await apply(store, claimed("custom1"), LeaseLost(None, "taken over"))
    assert not store.settled and stats["lease_lost"] == 1
