"""The sandbox's prospect lookup, creation and seeding over real HTTP (issue 21)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support import LiveSandbox, Reply, Sandbox

Start = Callable[..., Awaitable[LiveSandbox]]
PROSPECTS = "/api/v2/prospects"


def new(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"type": "prospect", "attributes": attributes}}


async def seed(sb: LiveSandbox, *prospects: dict[str, Any]) -> list[int]:
    ids: list[int] = (await sb.control("prospects", {"prospects": list(prospects)}))["ids"]
    return ids


async def find(sb: LiveSandbox, **params: str) -> Reply:
    return await sb.call("GET", PROSPECTS, params=params)


def ids_of(reply: Reply) -> list[int]:
    assert reply.status == 200, reply.body
    return [resource["id"] for resource in reply.body["data"]]


# --- lookup ----------------------------------------------------------------------------


async def test_comma_list_is_an_or_and_matches_case_insensitively(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    a, b, _ = await seed(
        sb,
        {"emails": ["Ada@X.com"], "attributes": {"firstName": "Ada"}},
        {"emails": ["bob@y.com", "b2@y.com"]},
        {"emails": ["carl@z.com"]},
    )
    reply = await find(sb, **{"filter[emails]": "ada@x.COM, b2@y.com,nobody@n.com"})
    assert ids_of(reply) == [a, b]
    first = reply.body["data"][0]
    assert first["type"] == "prospect"
    assert first["attributes"]["emails"] == ["Ada@X.com"]
    assert first["attributes"]["firstName"] == "Ada"
    assert first["attributes"]["createdAt"].endswith("Z") and first["attributes"]["updatedAt"]
    assert reply.body["links"] == {} and "meta" not in reply.body


async def test_case_sensitive_matching_is_a_sandbox_option(live_sandbox: Start) -> None:
    sb = await live_sandbox(lookup_case_sensitive=True)
    (a,) = await seed(sb, {"emails": ["Ada@X.com"]})
    assert ids_of(await find(sb, **{"filter[emails]": "ada@x.com"})) == []
    assert ids_of(await find(sb, **{"filter[emails]": "Ada@X.com"})) == [a]


async def test_repeated_form_needs_new_filter_syntax(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    a, b = await seed(sb, {"emails": ["a@x.com"]}, {"emails": ["b@x.com"]})
    repeated = [("filter[emails][]", "a@x.com"), ("filter[emails][]", "b@x.com")]
    refused = await sb.call("GET", PROSPECTS, params=repeated)
    assert refused.status == 400 and "newFilterSyntax" in refused.error["detail"]
    reply = await sb.call("GET", PROSPECTS, params=[("newFilterSyntax", "true"), *repeated])
    assert ids_of(reply) == [a, b]
    await sb.control("config", {"lookup_brackets_need_new_syntax": False})
    assert ids_of(await sb.call("GET", PROSPECTS, params=repeated)) == [a, b]


async def test_cursor_pages_until_no_next_link(live_sandbox: Start) -> None:
    sb = await live_sandbox(purposeful_duplicates=True)
    ids = await seed(sb, *({"emails": ["shared@x.com"]} for _ in range(120)))
    seen: list[int] = []
    reply = await find(sb, **{"filter[emails]": "shared@x.com", "count": "true"})
    sizes = []
    while True:
        sizes.append(len(ids_of(reply)))
        seen += ids_of(reply)
        assert reply.body["meta"] == {"count": 120}
        next_url = reply.body["links"].get("next")
        if next_url is None:
            break
        assert "page%5Bafter%5D=" in next_url or "page[after]=" in next_url
        reply = await sb.call("GET", next_url)
    assert sizes == [50, 50, 20]
    assert seen == sorted(ids)


async def test_page_size_is_capped_or_refused_above_the_maximum(live_sandbox: Start) -> None:
    sb = await live_sandbox(page_size_max=7)
    await seed(sb, *({"emails": [f"p{i}@x.com"]} for i in range(10)))
    assert len(ids_of(await find(sb, **{"page[size]": "3"}))) == 3
    assert len(ids_of(await find(sb, **{"page[size]": "1000"}))) == 7
    await sb.control("config", {"page_size_over_max": "refuse"})
    refused = await find(sb, **{"page[size]": "8"})
    assert refused.status == 400 and "at most 7" in refused.error["detail"]
    assert (await find(sb, **{"page[after]": "garbage"})).status == 400


async def test_sparse_fieldset_keeps_only_the_named_attributes(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    (a,) = await seed(
        sb, {"emails": ["a@x.com"], "attributes": {"firstName": "Ada", "custom4": "v"}}
    )
    reply = await find(sb, **{"filter[emails]": "a@x.com", "fields[prospect]": "emails,updatedAt"})
    assert reply.body["data"][0]["id"] == a
    assert set(reply.body["data"][0]["attributes"]) == {"emails", "updatedAt"}


async def test_lists_can_be_refused_and_bounded(live_sandbox: Start) -> None:
    sb = await live_sandbox(lookup_lists=False)
    (a,) = await seed(sb, {"emails": ["a@x.com"]})
    assert ids_of(await find(sb, **{"filter[emails]": "a@x.com"})) == [a]
    refused = await find(sb, **{"filter[emails]": "a@x.com,b@x.com"})
    assert refused.status == 400 and "single value" in refused.error["detail"]
    await sb.control("config", {"lookup_lists": True, "lookup_max_values": 2})
    assert (await find(sb, **{"filter[emails]": "a@x.com,b@x.com"})).status == 200
    over = await find(sb, **{"filter[emails]": "a@x.com,b@x.com,c@x.com"})
    assert over.status == 400 and "at most 2 values, got 3" in over.error["detail"]


async def test_id_filter_ands_with_emails_and_custom_fields_are_not_filterable(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox()
    a, b, c = await seed(sb, {"emails": ["a@x.com"]}, {"emails": ["b@x.com"]}, {})
    assert ids_of(await find(sb, **{"filter[id]": f"{a},{c}"})) == [a, c]
    both = await find(sb, **{"filter[id]": f"{a},{c}", "filter[emails]": "a@x.com,b@x.com"})
    assert ids_of(both) == [a]
    for name in ("externalId", "custom4"):
        reply = await find(sb, **{f"filter[{name}]": "x"})
        assert reply.status == 400 and name in reply.error["detail"]
    assert b


async def test_lookup_passes_auth_quota_and_scope_like_patch(live_sandbox: Start) -> None:
    sb = await live_sandbox(quota_limit=3)
    assert (await sb.call("GET", PROSPECTS, token=None)).status == 401
    assert (await find(sb)).status == 200
    await sb.control(
        "tokens", {"access_token": "seq-only", "user": "alice", "scope": "sequences.all"}
    )
    forbidden = await sb.call("GET", PROSPECTS, token="seq-only")
    assert forbidden.status == 403
    assert forbidden.error["id"] == "unauthorizedOauthScope"
    patch = {"data": {"type": "prospect", "id": 1, "attributes": {"custom1": "x"}}}
    refused = await sb.call("PATCH", f"{PROSPECTS}/1", body=patch, token="seq-only")
    assert refused.status == 403 and await sb.control("prospects") == {}
    limited = await find(sb)
    assert limited.status == 429 and limited.error["id"] == "rateLimitExceeded"
    assert limited.headers["X-RateLimit-Remaining"] == "0" and "Retry-After" in limited.headers


# --- create ----------------------------------------------------------------------------


async def test_create_answers_201_with_a_new_id_the_lookup_then_finds(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox()
    (old,) = await seed(sb, {"emails": ["old@x.com"]})
    reply = await sb.call(
        "POST", PROSPECTS, body=new({"emails": ["ada@x.com"], "custom4": "realized"})
    )
    assert reply.status == 201, reply.body
    data = reply.body["data"]
    assert data["type"] == "prospect" and data["id"] > old
    assert data["attributes"]["custom4"] == "realized" and data["attributes"]["createdAt"]
    assert ids_of(await find(sb, **{"filter[emails]": "ADA@x.com"})) == [data["id"]]
    patched = await sb.call(
        "PATCH",
        f"{PROSPECTS}/{data['id']}",
        body={"data": {"type": "prospect", "id": data["id"], "attributes": {"custom5": "y"}}},
    )
    assert patched.status == 200
    empty = await sb.call("POST", PROSPECTS, body={"data": {"type": "prospect"}})
    assert empty.status == 201


async def test_create_with_a_taken_email_is_422_unless_purposeful_duplicates(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox()
    (first,) = await seed(sb, {"emails": ["ada@x.com"]})
    taken = await sb.call("POST", PROSPECTS, body=new({"emails": ["other@x.com", "Ada@X.com"]}))
    assert taken.status == 422
    assert taken.error["id"] == "validationError"
    assert taken.error["detail"] == "Contacts email hash has already been taken."
    assert taken.error["source"] == {"pointer": "/data"}
    await sb.control("config", {"purposeful_duplicates": True})
    again = await sb.call("POST", PROSPECTS, body=new({"emails": ["ada@x.com"]}))
    assert again.status == 201
    by_email = await sb.control("emails?email=ADA@x.com")
    assert by_email == {"emails": {"ada@x.com": [first, again.body["data"]["id"]]}}
    assert (await sb.control("emails?duplicates=true"))["emails"] == by_email["emails"]


async def test_case_sensitive_dedupe_lets_a_differently_cased_email_in(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox(dedupe_case_sensitive=True)
    await seed(sb, {"emails": ["ada@x.com"]})
    assert (await sb.call("POST", PROSPECTS, body=new({"emails": ["ADA@x.com"]}))).status == 201
    assert (await sb.call("POST", PROSPECTS, body=new({"emails": ["ada@x.com"]}))).status == 422


async def test_excluded_domain_is_422(live_sandbox: Start) -> None:
    sb = await live_sandbox(excluded_email_domains=["corp.example"])
    reply = await sb.call("POST", PROSPECTS, body=new({"emails": ["me@CORP.example"]}))
    assert reply.status == 422
    assert reply.error["detail"] == "Contacts contact is using an excluded email address."
    assert await sb.control("prospects") == {}


@pytest.mark.parametrize(
    ("attributes", "status", "pointer"),
    [
        ({"custom21": "x"}, 400, "/data/attributes/custom21"),
        ({"favouriteColour": "x"}, 400, "/data/attributes/favouriteColour"),
        ({"name": "x"}, 400, "/data/attributes/name"),
        ({"firstName": "x" * 256}, 422, "/data/attributes/firstName"),
        ({"emails": "a@x.com"}, 422, "/data/attributes/emails"),
        ({"custom1": 5}, 422, "/data/attributes/custom1"),
    ],
)
async def test_create_validates_attributes_like_patch(
    live_sandbox: Start, attributes: dict[str, Any], status: int, pointer: str
) -> None:
    sb = await live_sandbox(usable_custom_fields=20)
    reply = await sb.call("POST", PROSPECTS, body=new(attributes))
    assert reply.status == status
    assert reply.error["source"]["pointer"] == pointer
    assert await sb.control("prospects") == {}


async def test_create_needs_jsonapi_and_no_client_id(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    async with sb.session.post(
        sb.url + PROSPECTS,
        json=new({}),
        headers={"Authorization": "Bearer tok-alice"},
    ) as resp:
        assert resp.status == 415
    with_id = {"data": {"type": "prospect", "id": 5, "attributes": {}}}
    assert (await sb.call("POST", PROSPECTS, body=with_id)).status == 400


# --- seeding ---------------------------------------------------------------------------


async def test_seeding_keeps_given_ids_times_and_duplicates(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    ids = await seed(
        sb,
        {"id": 500, "emails": ["a@x.com"], "updated_at": "2025-01-02T03:04:05Z"},
        {"emails": ["a@x.com"], "attributes": {"custom4": "v"}, "updated_at": 1_700_000_000},
    )
    assert ids == [500, 501]
    reply = await find(sb, **{"filter[emails]": "a@x.com"})
    updated = [r["attributes"]["updatedAt"] for r in reply.body["data"]]
    assert updated == ["2025-01-02T03:04:05.000000Z", "2023-11-14T22:13:20.000000Z"]
    assert (await sb.control("emails?duplicates=true"))["emails"] == {"a@x.com": [500, 501]}
    bad = {"prospects": [{"emails": ["b@x.com"], "attributes": {"custom999": "x"}}]}
    async with sb.session.post(f"{sb.url}/_sandbox/prospects", json=bad) as resp:
        assert resp.status == 400
        assert "prospects.0.attributes.custom999" in (await resp.json())["error"]


async def test_seeding_20k_prospects_takes_one_quick_call(live_sandbox: Start) -> None:
    sb = await live_sandbox()
    prospects = [{"emails": [f"p{i}@x.com"], "attributes": {"custom4": "v"}} for i in range(20_000)]
    started = time.monotonic()
    ids = await seed(sb, *prospects)
    assert len(ids) == 20_000 and time.monotonic() - started < 15
    assert (await sb.control("emails?duplicates=true"))["emails"] == {}
    assert ids_of(await find(sb, **{"filter[emails]": "p19999@x.com"})) == [ids[-1]]


# --- faults ----------------------------------------------------------------------------


async def test_create_then_drop_leaves_the_prospect_and_a_retry_meets_the_dedupe(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox()
    await sb.control(
        "faults", {"route": "POST /api/v2/prospects", "kind": "drop_after_write", "count": 1}
    )
    with pytest.raises(aiohttp.ClientError):
        await sb.call("POST", PROSPECTS, body=new({"emails": ["ada@x.com"]}))
    assert list((await sb.control("emails"))["emails"]) == ["ada@x.com"]
    retry = await sb.call("POST", PROSPECTS, body=new({"emails": ["ada@x.com"]}))
    assert retry.status == 422
    rules = (await sb.control("faults"))["rules"]
    assert [(r["kind"], r["fired"]) for r in rules] == [("drop_after_write", 1)]
    log = (await sb.control("requests"))["requests"]
    assert [entry["status"] for entry in log] == [0, 422]


async def test_5xx_after_write_answers_an_error_for_a_write_that_happened(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox()
    rule = {"route": "POST /api/v2/prospects", "kind": "5xx_after_write", "status": 503}
    await sb.control("faults", rule)
    reply = await sb.call("POST", PROSPECTS, body=new({"emails": ["ada@x.com"]}))
    assert reply.status == 503 and reply.error["id"] == "scheduledServerMaintenance"
    assert len(await sb.control("prospects")) == 1
    refused = await sb.call("POST", PROSPECTS, body=new({"emails": ["ada@x.com"]}))
    assert refused.status == 422  # not a success: an after-write fault does not strike


async def test_armed_rules_strike_only_their_route_and_only_count_times(
    live_sandbox: Start,
) -> None:
    sb = await live_sandbox()
    await sb.control("faults", {"route": "GET /api/v2/prospects", "kind": "5xx", "count": 2})
    assert (await sb.call("POST", PROSPECTS, body=new({}))).status == 201
    assert [(await find(sb)).status for _ in range(3)] == [500, 500, 200]
    await sb.control("faults/clear", {})
    await sb.control("faults", {"route": "*", "kind": "drop", "rate": 0.5})
    outcomes = []
    for _ in range(40):
        try:
            outcomes.append((await find(sb)).status)
        except aiohttp.ClientError:
            outcomes.append(0)
    assert 5 < outcomes.count(0) < 35 and set(outcomes) == {0, 200}
    await sb.control("reset", {})
    assert (await sb.control("faults"))["rules"] == []


async def test_random_faults_reach_the_new_routes(live_sandbox: Start) -> None:
    sb = await live_sandbox(fault_5xx_rate=1.0, fault_seed=1)
    assert (await find(sb)).status >= 500
    assert (await sb.call("POST", PROSPECTS, body=new({}))).status >= 500
    assert await sb.control("prospects") == {}


def test_a_sandbox_process_takes_the_knobs_as_options(
    sandbox_factory: Callable[..., Sandbox],
) -> None:
    sb = sandbox_factory(
        "--purposeful-duplicates", "--no-lookup-lists", "--excluded-email-domain", "corp.example"
    )
    config = sb.get("/_sandbox/config")
    assert config["purposeful_duplicates"] and not config["lookup_lists"]
    assert config["excluded_email_domains"] == ["corp.example"]
    assert sb.seed([{"emails": ["a@x.com"]}, {"emails": ["A@x.com"]}]) == [1, 2]
    assert sb.emails(duplicates=True) == {"a@x.com": [1, 2]}


async def test_create_refuses_text_in_a_number_field_as_patch_does(live_sandbox: Start) -> None:
    sb = await live_sandbox(custom_field_types={5: "number"})
    refused = await sb.call("POST", PROSPECTS, body=new({"custom5": "many"}))
    assert (
        refused.status == 422 and refused.error["source"]["pointer"] == "/data/attributes/custom5"
    )
    assert (await sb.call("POST", PROSPECTS, body=new({"custom5": "12"}))).status == 201
