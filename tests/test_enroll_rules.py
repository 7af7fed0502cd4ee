"""Enrollment's pure rules (which delivered fields call for what, what a refusal means) and
its state machine in Redis, without HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.config.destinations import Destination, parse_config
from app.core.keys import Keys
from app.enroll import EnrollStore, Intent, Outcome
from app.enroll.rules import audience_fields, intents, read_refusal
from tests.support import TEST_REDIS_URL

D = "d"


def dest(**status_values: str | None) -> Destination:
    doc = {
        "connections": [{"id": "c"}],
        "destinations": [
            {
                "id": D,
                "name": D,
                "connection": "c",
                "audiences": {"a": 5, "b": 6},
                "status_values": status_values,
                "sequencing": {"sequences": {"a": {"sequence": 7, "on_exit": "pause"}}},
            }
        ],
    }
    return parse_config(doc).destinations[0]


def test_entry_and_exit_are_read_from_the_delivered_value_of_enrolling_audiences() -> None:
    d = dest(realized="in", existing="in", exited=None)
    by_field = audience_fields(d, {})
    assert by_field == {"custom5": "a"}
    found = intents(d, by_field, 1, {"custom5": "in", "custom6": "in"})
    assert found == [Intent(1, 7, "a", "in", False, "pause")]
    assert [i.kind for i in intents(d, by_field, 1, {"custom5": None})] == ["out"]
    assert intents(d, by_field, 1, {"custom5": "other"}) == []


def test_a_data_mapped_audience_is_found_through_the_learned_table() -> None:
    d = dest()
    assert audience_fields(d.model_copy(update={"audiences": {}}), {"a": 9}) == {"custom9": "a"}


ALREADY = "has already been in this sequence"


@pytest.mark.parametrize(
    ("status", "key", "text", "already", "reason"),
    [
        (422, "code", ALREADY, True, "already"),
        (422, "detail", f"Prospect {ALREADY}", True, "already"),
        (422, "code", "prospect has opted out", False, "opted_out"),
        (422, "detail", "already active in an exclusive sequence", False, "exclusive_sequence"),
        (422, "code", "mailbox cannot send", False, "mailbox_cannot_send"),
        (403, "id", "unauthorizedOauthScope", False, "scope_missing"),
        (422, "detail", "Something new", False, "http_422"),
    ],
)
def test_refusals_are_read_from_code_or_detail(
    status: int, key: str, text: str, already: bool, reason: str
) -> None:
    body = json.dumps({"errors": [{key: text}]})
    refusal = read_refusal(status, body, already_texts=[ALREADY])
    assert (refusal.already, refusal.reason) == (already, reason)
    assert refusal.text


def test_the_already_text_is_configurable() -> None:
    body = json.dumps({"errors": [{"detail": "Prospect is in sequence"}]})
    assert read_refusal(422, body, already_texts=["is in sequence"]).already


@pytest.fixture
async def store(prefix: str) -> AsyncIterator[EnrollStore]:
    client = aioredis.from_url(TEST_REDIS_URL)
    yield EnrollStore(client, Keys(prefix))
    await client.aclose()


async def _claimed(store: EnrollStore, pid: int, token: str) -> None:
    await store.redis.hset(store.keys.lease_tokens(D), str(pid), token)  # type: ignore[misc]


async def test_an_exit_while_an_enrollment_is_sent_finishes_it_once_enrolled(
    store: EnrollStore, rclient: object
) -> None:
    await _claimed(store, 1, "t")
    assert await store.note(D, "t", [Intent(1, 7, "a", "in")], now_ms=1) == 1
    [job] = await store.claim(D, "s", now_ms=2, lease_ms=100, most=5)
    # The prospect leaves while the enrollment is on the wire.
    await store.note(D, "t", [Intent(1, 7, "a", "out", on_exit="finish")], now_ms=3)
    assert await store.settle(D, "s", job, Outcome("enrolled", count="enrolled"), now_ms=4)
    [exit_job] = await store.claim(D, "s2", now_ms=5, lease_ms=100, most=5)
    assert (exit_job.op, exit_job.on_exit) == ("exit", "finish")


async def test_a_note_from_a_claim_no_longer_ours_changes_nothing(
    store: EnrollStore, rclient: object
) -> None:
    await _claimed(store, 1, "other")
    assert await store.note(D, "t", [Intent(1, 7, "a", "in")], now_ms=1) == 0
    assert await store.state(D, 1, 7) is None


async def test_a_late_settle_after_the_lease_was_taken_over_changes_nothing(
    store: EnrollStore, rclient: object
) -> None:
    await _claimed(store, 1, "t")
    await store.note(D, "t", [Intent(1, 7, "a", "in")], now_ms=1)
    [job] = await store.claim(D, "dead", now_ms=2, lease_ms=10, most=5)
    [again] = await store.claim(D, "alive", now_ms=20, lease_ms=10, most=5)
    assert again.unknown  # the first send's outcome is unknown: look it up first
    assert not await store.settle(D, "dead", job, Outcome("enrolled"), now_ms=21)
    assert (await store.state(D, 1, 7) or {})["st"] == "sending"


async def test_a_write_is_renewed_only_while_the_claim_is_ours(
    store: EnrollStore, rclient: object
) -> None:
    await _claimed(store, 1, "t")
    await store.note(D, "t", [Intent(1, 7, "a", "in")], now_ms=1)
    [job] = await store.claim(D, "slow", now_ms=2, lease_ms=10, most=5)
    assert await store.renew(D, "slow", job, until_ms=11)
    await store.claim(D, "taker", now_ms=12, lease_ms=10, most=5)
    assert not await store.renew(D, "slow", job, until_ms=30)  # the slow one sends nothing
