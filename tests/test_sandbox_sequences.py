"""The sandbox's sequences, sequence states, mailboxes and bulk enrolment over real HTTP
(issue 23)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.support import LiveSandbox, Reply

Start = Callable[..., Awaitable[LiveSandbox]]
STATES = "/api/v2/sequenceStates"
ADD = "/api/v2/batches/actions/prospectsAddToSequence"
WELCOME, EXCLUSIVE_A, EXCLUSIVE_B, DISABLED, OPEN, ONCE_INACTIVE = 1, 2, 3, 4, 5, 6
MAILBOX, MUTE = 10, 11


async def setup(sb: LiveSandbox) -> None:
    sequences = [
        {"id": WELCOME, "name": "Welcome"},
        {"id": EXCLUSIVE_A, "name": "A", "exclusive": True},
        {"id": EXCLUSIVE_B, "name": "B", "exclusive": True},
        {"id": DISABLED, "name": "Off", "enabled": False},
        {"id": OPEN, "name": "Open", "permit_duplicate_prospects": "allow"},
        {"id": ONCE_INACTIVE, "permit_duplicate_prospects": "only_if_inactive"},
    ]
    await sb.control("sequences", {"sequences": sequences})
    mailboxes = [
        {"id": MAILBOX, "user": "alice", "email": "alice@corp.example", "default": True},
        {"id": MUTE, "user": "alice", "can_send": False},
        {"id": 12, "user": "bob"},
    ]
    await sb.control("mailboxes", {"mailboxes": mailboxes})


async def started(live_sandbox: Start, **config: Any) -> LiveSandbox:
    sb = await live_sandbox(**config)
    await setup(sb)
    return sb


def enrolment(prospect: int, sequence: int, mailbox: int | None = MAILBOX) -> dict[str, Any]:
    links: dict[str, Any] = {
        "prospect": {"data": {"type": "prospect", "id": prospect}},
        "sequence": {"data": {"type": "sequence", "id": sequence}},
    }
    if mailbox is not None:
        links["mailbox"] = {"data": {"type": "mailbox", "id": mailbox}}
    return {"data": {"type": "sequenceState", "relationships": links}}


async def enroll(sb: LiveSandbox, prospect: int, sequence: int, **kw: Any) -> Reply:
    return await sb.call("POST", STATES, body=enrolment(prospect, sequence, **kw))


async def act(sb: LiveSandbox, state_id: int, action: str) -> Reply:
    return await sb.call("POST", f"{STATES}/{state_id}/actions/{action}")


# --- reading sequences, mailboxes, users ------------------------------------------------


async def test_sequence_with_its_ruleset(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    reply = await sb.call("GET", f"/api/v2/sequences/{WELCOME}", params={"include": "ruleset"})
    assert reply.status == 200
    assert reply.body["data"]["attributes"] == {"name": "Welcome", "enabled": True}
    ruleset = reply.body["included"][0]
    assert ruleset["type"] == "ruleset"
    assert ruleset["attributes"]["permitDuplicateProspects"] == "disallow"
    missing = await sb.call("GET", "/api/v2/sequences/99")
    assert missing.status == 404 and missing.error["id"] == "resourceNotFound"


async def test_mailboxes_by_user_and_the_users_default(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    reply = await sb.call("GET", "/api/v2/mailboxes", params={"filter[userId]": "alice"})
    assert [m["id"] for m in reply.body["data"]] == [MAILBOX, MUTE]
    assert [m["attributes"]["sendDisabled"] for m in reply.body["data"]] == [False, True]
    user = await sb.call("GET", "/api/v2/users/alice", params={"include": "mailbox"})
    assert user.body["data"]["relationships"]["mailbox"]["data"] == {
        "type": "mailbox",
        "id": MAILBOX,
    }
    assert user.body["included"][0]["attributes"]["email"] == "alice@corp.example"
    assert (await sb.call("GET", "/api/v2/users/nobody")).status == 404


# --- enrolling and the ruleset gates ----------------------------------------------------


async def test_enroll_is_201_and_a_second_time_is_refused_even_after_finishing(
    live_sandbox: Start,
) -> None:
    sb = await started(live_sandbox)
    created = await enroll(sb, 7, WELCOME)
    assert created.status == 201, created.body
    data = created.body["data"]
    assert data["type"] == "sequenceState" and data["attributes"]["state"] == "active"
    assert data["relationships"]["mailbox"]["data"] == {"type": "mailbox", "id": MAILBOX}
    again = await enroll(sb, 7, WELCOME)
    assert again.status == 422 and again.error["code"] == "has already been in this sequence"
    assert (await act(sb, data["id"], "finish")).status == 200
    after = await enroll(sb, 7, WELCOME)
    assert after.status == 422 and after.error["code"] == "has already been in this sequence"


async def test_permit_duplicates_allow_and_only_if_inactive(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    assert [(await enroll(sb, 7, OPEN)).status for _ in range(2)] == [201, 201]
    first = await enroll(sb, 7, ONCE_INACTIVE)
    assert (await enroll(sb, 7, ONCE_INACTIVE)).status == 422
    await act(sb, first.body["data"]["id"], "finish")
    assert (await enroll(sb, 7, ONCE_INACTIVE)).status == 201


async def test_opted_out_prospects_are_refused(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    await sb.control("opted-out", {"prospect_ids": [7]})
    refused = await enroll(sb, 7, WELCOME)
    assert refused.status == 422 and refused.error["code"] == "prospect has opted out"
    patch = {"data": {"type": "prospect", "id": 8, "attributes": {"optedOut": True}}}
    assert (await sb.call("PATCH", "/api/v2/prospects/8", body=patch)).status == 200
    assert (await enroll(sb, 8, WELCOME)).status == 422


async def test_exclusive_sequences_hold_a_prospect_while_active(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    first = await enroll(sb, 7, EXCLUSIVE_A)
    refused = await enroll(sb, 7, EXCLUSIVE_B)
    assert refused.status == 422
    assert refused.error["code"] == "already active in an exclusive sequence"
    assert (await enroll(sb, 7, WELCOME)).status == 201
    await act(sb, first.body["data"]["id"], "finish")
    assert (await enroll(sb, 7, EXCLUSIVE_B)).status == 201


async def test_disabled_sequence_refuses_or_takes_the_prospect_pending(
    live_sandbox: Start,
) -> None:
    sb = await started(live_sandbox)
    refused = await enroll(sb, 7, DISABLED)
    assert refused.status == 422 and refused.error["code"] == "sequence is disabled"
    await sb.control("config", {"disabled_sequence": "pending"})
    pending = await enroll(sb, 7, DISABLED)
    assert pending.status == 201 and pending.body["data"]["attributes"]["state"] == "pending"


async def test_mailbox_that_cannot_send_or_is_missing(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    mute = await enroll(sb, 7, WELCOME, mailbox=MUTE)
    assert mute.status == 422 and mute.error["code"] == "mailbox cannot send"
    assert (await enroll(sb, 7, WELCOME, mailbox=99)).status == 404
    blank = await enroll(sb, 7, WELCOME, mailbox=None)
    assert blank.status == 422 and blank.error["source"]["pointer"].endswith("/mailbox")
    await sb.control("config", {"enroll_without_mailbox": "default"})
    default = await enroll(sb, 7, WELCOME, mailbox=None)
    assert default.body["data"]["relationships"]["mailbox"]["data"]["id"] == MAILBOX
    assert (await enroll(sb, 7, 99)).status == 404
    unknown = await enroll(sb, 20_000_000, WELCOME)
    assert unknown.status == 404 and "prospect" in unknown.error["detail"]


@pytest.mark.parametrize(
    "document",
    [
        {"data": {"type": "prospect"}},
        {"data": {"type": "sequenceState", "relationships": {}}},
        {
            "data": {
                "type": "sequenceState",
                "relationships": enrolment(0, 1)["data"]["relationships"],
            }
        },
    ],
)
async def test_malformed_enrolment_is_400(live_sandbox: Start, document: Any) -> None:
    sb = await started(live_sandbox)
    assert (await sb.call("POST", STATES, body=document)).status == 400


# --- finding, acting on and deleting states ---------------------------------------------


async def test_filters_are_anded_and_pages_follow_the_cursor(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    for prospect in range(1, 8):
        await enroll(sb, prospect, OPEN)
        await enroll(sb, prospect, WELCOME)
    one = await sb.call(
        "GET", STATES, params={"filter[prospect][id]": "3", "filter[sequence][id]": str(WELCOME)}
    )
    assert len(one.body["data"]) == 1
    rel = one.body["data"][0]["relationships"]
    assert (rel["prospect"]["data"]["id"], rel["sequence"]["data"]["id"]) == (3, WELCOME)
    page = await sb.call(
        "GET", STATES, params={"filter[sequence][id]": str(OPEN), "page[size]": "5"}
    )
    assert len(page.body["data"]) == 5
    assert "page[after]" in parse_qs(urlsplit(page.body["links"]["next"]).query)
    rest = await sb.call("GET", page.body["links"]["next"])
    assert len(rest.body["data"]) == 2 and rest.body["links"] == {}


async def test_pause_resume_finish_and_their_refusals(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    state_id = (await enroll(sb, 7, WELCOME)).body["data"]["id"]
    assert (await act(sb, state_id, "resume")).status == 422
    paused = await act(sb, state_id, "pause")
    assert paused.status == 200 and paused.body["data"]["attributes"]["state"] == "paused"
    assert (await act(sb, state_id, "resume")).body["data"]["attributes"]["state"] == "active"
    assert (await act(sb, state_id, "finish")).body["data"]["attributes"]["state"] == "finished"
    assert [(await act(sb, state_id, a)).status for a in ("pause", "finish")] == [422, 422]
    assert (await act(sb, state_id, "explode")).status == 404
    assert (await act(sb, 999, "pause")).status == 404


async def test_delete_is_204_and_forgets_the_state(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    state_id = (await enroll(sb, 7, WELCOME)).body["data"]["id"]
    deleted = await sb.call("DELETE", f"{STATES}/{state_id}")
    assert deleted.status == 204 and deleted.body is None
    assert (await sb.call("DELETE", f"{STATES}/{state_id}")).status == 404
    assert (await sb.control("sequence-states"))["states"] == []


async def test_control_reads_every_state_of_a_prospect_and_sequence(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    await enroll(sb, 7, OPEN)
    await enroll(sb, 7, OPEN)
    await enroll(sb, 8, OPEN)
    states = (await sb.control("sequence-states?prospect_id=7&sequence_id=5"))["states"]
    assert [(s["prospect_id"], s["sequence_id"], s["state"]) for s in states] == [
        (7, OPEN, "active"),
        (7, OPEN, "active"),
    ]


# --- scopes, quota and faults -----------------------------------------------------------


async def test_oauth_token_without_sequence_scopes_gets_403(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    narrow = {"access_token": "narrow", "user": "alice", "scope": "prospects.all"}
    await sb.control("tokens", narrow)
    wide = {"access_token": "wide", "user": "alice", "scope": "sequenceStates.write"}
    await sb.control("tokens", wide)
    refused = await sb.call("POST", STATES, body=enrolment(7, WELCOME), token="narrow")
    assert refused.status == 403 and refused.error["id"] == "unauthorizedOauthScope"
    assert "sequenceStates.write" in refused.error["detail"]
    assert (await sb.call("GET", "/api/v2/mailboxes", token="narrow")).status == 403
    assert (await sb.call("POST", STATES, body=enrolment(7, WELCOME), token="wide")).status == 201
    # .write does not imply .read
    assert (await sb.call("GET", STATES, token="wide")).status == 403


async def test_granted_scopes_come_from_the_authorize_request(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    redirect = "http://localhost:9/cb"
    scope = "prospects.all sequences.all sequenceStates.all mailboxes.read"
    params = {
        "client_id": "sandbox-client",
        "redirect_uri": redirect,
        "response_type": "code",
        "scope": scope,
    }
    async with sb.session.get(
        f"{sb.url}/oauth/authorize", params=params, allow_redirects=False
    ) as resp:
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "client_id": "sandbox-client",
        "client_secret": "sandbox-secret",
    }
    async with sb.session.post(f"{sb.url}/oauth/token", data=form) as resp:
        issued = await resp.json()
    assert issued["scope"] == scope
    await setup(sb)
    token = issued["access_token"]
    assert (await sb.call("GET", "/api/v2/mailboxes", token=token)).status == 200
    assert (await sb.call("GET", "/api/v2/users/alice", token=token)).status == 403


async def test_sequence_routes_spend_the_same_quota(live_sandbox: Start) -> None:
    sb = await started(live_sandbox, quota_limit=3)
    assert (await enroll(sb, 7, WELCOME)).status == 201
    assert (await sb.call("GET", STATES)).status == 200
    assert (await sb.call("GET", "/api/v2/sequences/1")).status == 200
    limited = await enroll(sb, 8, WELCOME)
    assert limited.status == 429 and limited.headers["X-RateLimit-Remaining"] == "0"
    assert len((await sb.control("sequence-states"))["states"]) == 1


async def test_enrolled_then_dropped_and_the_retry_is_already_in(live_sandbox: Start) -> None:
    sb = await started(live_sandbox)
    rule = {"route": "POST /api/v2/sequenceStates", "kind": "drop_after_write", "count": 1}
    await sb.control("faults", rule)
    with pytest.raises(aiohttp.ClientError):
        await enroll(sb, 7, WELCOME)
    assert len((await sb.control("sequence-states?prospect_id=7"))["states"]) == 1
    retry = await enroll(sb, 7, WELCOME)
    assert retry.status == 422 and retry.error["code"] == "has already been in this sequence"


# --- bulk ---------------------------------------------------------------------------------


async def test_bulk_add_to_sequence_is_a_batch_with_an_item_per_record(
    live_sandbox: Start,
) -> None:
    sb = await started(live_sandbox, bulk_records_per_s=2.0)
    await enroll(sb, 3, WELCOME)
    await sb.control("opted-out", {"prospect_ids": [4]})
    body = {
        "data": {"attributes": {"ids": [1, 2, 3, 4], "sequenceId": WELCOME, "mailboxId": MAILBOX}}
    }
    created = await sb.call(
        "POST", ADD, body=body, params={"actionParams[skipConfirmation]": "true"}
    )
    assert created.status == 200, created.body
    batch = created.body["data"]
    assert batch["type"] == "batch"
    assert batch["attributes"]["action"] == "prospectsAddToSequence"
    assert batch["attributes"]["pending"] == 4
    assert len((await sb.control(f"sequence-states?sequence_id={WELCOME}"))["states"]) == 1
    sb.clock.now += 1.0
    halfway = await sb.call("GET", f"/api/v2/batches/{batch['id']}")
    assert halfway.body["data"]["attributes"]["pending"] == 2
    sb.clock.now += 1.0
    done = await sb.call("GET", f"/api/v2/batches/{batch['id']}")
    assert done.body["data"]["attributes"]["state"] == "finished"
    assert done.body["data"]["attributes"]["failures"] == 2
    items = await sb.call(
        "GET", "/api/v2/batchItems", params={"filter[batch][id]": str(batch["id"])}
    )
    outcomes = [(i["attributes"]["failed"], i["attributes"]["info"]) for i in items.body["data"]]
    assert outcomes == [
        (False, None),
        (False, None),
        (True, "The prospect has already been in this sequence."),
        (True, "The prospect has opted out."),
    ]
    states = (await sb.control(f"sequence-states?sequence_id={WELCOME}"))["states"]
    assert sorted(s["prospect_id"] for s in states) == [1, 2, 3]


async def test_bulk_add_checks_sequence_mailbox_and_scope_when_created(
    live_sandbox: Start,
) -> None:
    sb = await started(live_sandbox)
    for attributes, status in (
        ({"ids": [1], "sequenceId": 99, "mailboxId": MAILBOX}, 404),
        ({"ids": [1], "sequenceId": WELCOME, "mailboxId": 99}, 404),
        ({"ids": [1], "sequenceId": "x", "mailboxId": MAILBOX}, 400),
        ({"sequenceId": WELCOME, "mailboxId": MAILBOX}, 400),
    ):
        reply = await sb.call("POST", ADD, body={"data": {"attributes": attributes}})
        assert reply.status == status, (attributes, reply.body)
    await sb.control(
        "tokens", {"access_token": "narrow", "user": "alice", "scope": "prospects.all"}
    )
    body = {"data": {"attributes": {"ids": [1], "sequenceId": WELCOME, "mailboxId": MAILBOX}}}
    assert (await sb.call("POST", ADD, body=body, token="narrow")).status == 403
