"""The sandbox's Bulk API over real HTTP, with a clock the tests move."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.sandbox import SandboxConfig, make_app

JSONAPI = "application/vnd.api+json"
TOKEN = "tok-alice"
BULK = "/api/v2/batches/actions/prospectsBulkModify"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Bulk:
    url: str
    session: aiohttp.ClientSession
    clock: Clock

    async def call(self, method: str, path: str, *, body: Any = None, **params: str) -> Reply:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": JSONAPI}
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method, self.url + path, data=data, headers=headers, params=params or None
        ) as resp:
            text = await resp.text()
            parsed: Any = json.loads(text) if text else None
            return Reply(resp.status, dict(resp.headers), parsed)

    async def modify(self, attributes: dict[str, Any], **params: str) -> Reply:
        params.setdefault("actionParams[skipConfirmation]", "true")
        return await self.call("POST", BULK, body={"data": {"attributes": attributes}}, **params)

    async def batch(self, batch_id: int) -> dict[str, Any]:
        reply = await self.call("GET", f"/api/v2/batches/{batch_id}")
        assert reply.status == 200, reply.body
        attributes: dict[str, Any] = reply.body["data"]["attributes"]
        return attributes

    async def items(self, batch_id: int, size: int = 50) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        reply = await self.call(
            "GET",
            "/api/v2/batchItems",
            **{"filter[batch][id]": str(batch_id), "page[size]": str(size)},
        )
        while True:
            assert reply.status == 200, reply.body
            out += [item["attributes"] for item in reply.body["data"]]
            nxt = reply.body["links"].get("next")
            if not nxt:
                return out
            async with self.session.get(nxt, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                reply = Reply(r.status, dict(r.headers), await r.json(content_type=None))

    async def control(self, path: str) -> Any:
        async with self.session.get(f"{self.url}/_sandbox/{path}") as resp:
            return await resp.json()


Start = Callable[..., Awaitable[Bulk]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def _start(**config: Any) -> Bulk:
        config.setdefault("static_tokens", {TOKEN: "alice"})
        clock = Clock()
        runner = web.AppRunner(make_app(SandboxConfig(**config), clock=clock), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return Bulk(f"http://{host}:{port}", session, clock)

    yield _start
    await session.close()
    for runner in runners:
        await runner.cleanup()


async def test_a_batch_is_worked_through_at_the_configured_speed(start: Start) -> None:
    sb = await start(bulk_records_per_s=2.0)
    reply = await sb.modify({"custom4": "realized", "custom7": "exited", "ids": [1, 2, 3, 4]})
    assert reply.status == 200
    assert reply.body["data"]["type"] == "batch"
    batch_id = reply.body["data"]["id"]
    assert (await sb.batch(batch_id))["pending"] == 4
    assert await sb.control("prospects") == {}
    sb.clock.now += 1.0
    mid = await sb.batch(batch_id)
    assert (mid["pending"], mid["state"], mid["finishedAt"]) == (2, "running", None)
    sb.clock.now += 1.0
    done = await sb.batch(batch_id)
    assert (done["pending"], done["failures"], done["state"]) == (0, 0, "finished")
    assert done["finishedAt"] is not None
    prospects = await sb.control("prospects")
    assert prospects == {str(i): {"custom4": "realized", "custom7": "exited"} for i in range(1, 5)}


@pytest.mark.parametrize(
    "attributes",
    [
        {"fieldName": "custom4", "fieldValue": "realized"},
        {"field": "custom4", "value": "realized"},
        {"custom4": "realized"},
    ],
)
async def test_every_documented_body_form_sets_the_field(
    start: Start, attributes: dict[str, Any]
) -> None:
    sb = await start()
    reply = await sb.modify({**attributes, "ids": [7, 8]})
    assert reply.status == 200, reply.body
    sb.clock.now += 1
    assert await sb.control("prospects") == {
        "7": {"custom4": "realized"},
        "8": {"custom4": "realized"},
    }


async def test_ids_in_the_filter_are_the_only_ones_modified(start: Start) -> None:
    sb = await start()
    await sb.call(
        "PATCH",
        "/api/v2/prospects/9",
        body={"data": {"type": "prospect", "id": 9, "attributes": {"custom4": "x"}}},
    )
    reply = await sb.modify({"custom4": "realized"}, **{"actionParams[filter][id]": "3,5"})
    assert reply.status == 200, reply.body
    sb.clock.now += 1
    prospects = await sb.control("prospects")
    assert prospects == {
        "3": {"custom4": "realized"},
        "5": {"custom4": "realized"},
        "9": {"custom4": "x"},
    }


@pytest.mark.parametrize(
    ("attributes", "params"),
    [
        ({"custom4": "realized"}, {}),
        ({"custom4": "realized", "ids": []}, {}),
        ({"custom4": "realized"}, {"actionParams[filter][id]": ""}),
    ],
)
async def test_a_call_naming_no_ids_is_refused_and_modifies_nothing(
    start: Start, attributes: dict[str, Any], params: dict[str, str]
) -> None:
    sb = await start()
    await sb.call(
        "PATCH",
        "/api/v2/prospects/9",
        body={"data": {"type": "prospect", "id": 9, "attributes": {"custom4": "x"}}},
    )
    reply = await sb.modify(attributes, **params)
    assert reply.status == 400
    assert "ids" in reply.body["errors"][0]["detail"]
    sb.clock.now += 10
    assert await sb.control("prospects") == {"9": {"custom4": "x"}}
    assert (await sb.control("stats"))["bulk"]["batches"] == 0


async def test_more_ids_than_the_largest_list_is_refused(start: Start) -> None:
    sb = await start(bulk_max_ids=3)
    reply = await sb.modify({"custom4": "a", "ids": [1, 2, 3, 4]})
    assert reply.status == 422
    assert "At most 3 ids" in reply.body["errors"][0]["detail"]
    assert (await sb.modify({"custom4": "a", "ids": [1, 2, 3]})).status == 200


async def test_per_record_failures_carry_outreachs_reason(start: Start) -> None:
    sb = await start(prospect_ids=(1, 100), usable_custom_fields=10)
    ok = await sb.modify({"custom4": "a", "ids": [1, 500, 2]})
    bad_field = await sb.modify({"custom40": "a", "ids": [3]})
    sb.clock.now += 1
    first = await sb.batch(ok.body["data"]["id"])
    assert (first["failures"], first["state"]) == (1, "finished")
    items = {json.loads(i["data"])["id"]: i for i in await sb.items(ok.body["data"]["id"])}
    assert [items[p]["failed"] for p in (1, 500, 2)] == [False, True, False]
    assert items[500]["info"] == "Could not find 'prospect' with ID '500'."
    assert json.loads(items[1]["data"]) == {"id": 1, "custom4": "a"}
    [refused] = await sb.items(bad_field.body["data"]["id"])
    assert refused["failed"] is True
    assert "custom40" in refused["info"]
    assert await sb.control("prospects") == {"1": {"custom4": "a"}, "2": {"custom4": "a"}}


async def test_items_are_listed_page_by_page(start: Start) -> None:
    sb = await start()
    reply = await sb.modify({"custom4": "a", "ids": list(range(1, 121))})
    sb.clock.now += 1
    items = await sb.items(reply.body["data"]["id"], size=50)
    assert sorted(json.loads(i["data"])["id"] for i in items) == list(range(1, 121))
    log = (await sb.control("requests?since=0"))["requests"]
    assert sum(r["path"] == "/api/v2/batchItems" for r in log) == 3


@pytest.mark.parametrize(("mode", "cost"), [("call", 1), ("record", 40)])
async def test_quota_cost_per_call_or_per_record(start: Start, mode: str, cost: int) -> None:
    sb = await start(bulk_cost=mode, quota_limit=1000)
    reply = await sb.modify({"custom4": "a", "ids": list(range(1, 41))})
    assert int(reply.headers["X-RateLimit-Remaining"]) == 1000 - cost
    await sb.batch(reply.body["data"]["id"])
    assert (await sb.control("quota/alice"))["remaining"] == 1000 - cost - 1


async def test_a_stuck_batch_never_progresses_and_can_be_cancelled(start: Start) -> None:
    sb = await start(bulk_fault="stick")
    reply = await sb.modify({"custom4": "a", "ids": [1, 2]})
    batch_id = reply.body["data"]["id"]
    sb.clock.now += 3600
    assert (await sb.batch(batch_id))["pending"] == 2
    cancel = await sb.call("POST", f"/api/v2/batches/{batch_id}/actions/cancel")
    assert cancel.status == 200
    after = cancel.body["data"]["attributes"]
    assert after["state"] == "canceled" and after["canceledAt"] is not None
    assert await sb.control("prospects") == {}


async def test_a_cancel_stops_the_rest_of_a_running_batch(start: Start) -> None:
    sb = await start(bulk_records_per_s=1.0)
    batch_id = (await sb.modify({"custom4": "a", "ids": [1, 2, 3]})).body["data"]["id"]
    sb.clock.now += 1
    await sb.call("POST", f"/api/v2/batches/{batch_id}/actions/cancel")
    sb.clock.now += 10
    assert await sb.control("prospects") == {"1": {"custom4": "a"}}
    states = [i["state"] for i in await sb.items(batch_id)]
    assert states == ["done", "pending", "pending"]


async def test_outreach_may_cancel_a_batch_itself(start: Start) -> None:
    sb = await start(bulk_fault="cancel")
    batch_id = (await sb.modify({"custom4": "a", "ids": [1]})).body["data"]["id"]
    assert (await sb.batch(batch_id))["state"] == "canceled"


@pytest.mark.parametrize(("fault", "status"), [("forbidden", 403), ("not_found", 404)])
async def test_refusals(start: Start, fault: str, status: int) -> None:
    sb = await start(bulk_fault=fault)
    reply = await sb.modify({"custom4": "a", "ids": [1]})
    assert reply.status == status
    assert (await sb.control("stats"))["bulk"]["batches"] == 0


async def test_malformed_answers_can_be_configured(start: Start) -> None:
    sb = await start(bulk_fault="malformed")
    reply = await sb.modify({"custom4": "a", "ids": [1]})
    assert reply.status == 200
    assert "data" not in reply.body


async def test_without_skip_confirmation_a_batch_waits_to_be_confirmed(start: Start) -> None:
    sb = await start()
    reply = await sb.call("POST", BULK, body={"data": {"attributes": {"custom4": "a", "ids": [1]}}})
    batch_id = reply.body["data"]["id"]
    sb.clock.now += 5
    assert (await sb.batch(batch_id))["state"] == "awaiting_confirmation"
    await sb.call("POST", f"/api/v2/batches/{batch_id}/actions/confirm")
    sb.clock.now += 5
    assert (await sb.batch(batch_id))["state"] == "finished"


async def test_a_patch_after_a_bulk_record_is_written_wins(start: Start) -> None:
    sb = await start(bulk_records_per_s=1.0)
    await sb.modify({"custom4": "old", "ids": [1]})
    sb.clock.now += 2
    patch = {"data": {"type": "prospect", "id": 1, "attributes": {"custom4": "new"}}}
    assert (await sb.call("PATCH", "/api/v2/prospects/1", body=patch)).status == 200
    assert await sb.control("prospects") == {"1": {"custom4": "new"}}


async def test_settings_are_changed_through_the_control_api(start: Start) -> None:
    sb = await start()
    async with sb.session.post(
        f"{sb.url}/_sandbox/config", json={"bulk_cost": "record", "bulk_max_ids": 5}
    ) as resp:
        assert resp.status == 200
    reply = await sb.modify({"custom4": "a", "ids": list(range(1, 7))})
    assert reply.status == 422
