"""The Bulk API client against the sandbox over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.core.errors import Permanent, RateLimited
from app.outreach.bulk import (
    BulkClient,
    BulkModification,
    ProspectIds,
    UnexpectedAnswer,
    parse_batch,
)
from app.outreach.client import OutreachClient
from app.sandbox import SandboxConfig, make_app

TOKEN = "tok-alice"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


Start = Callable[..., Awaitable[tuple[BulkClient, Clock, str]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def _start(**config: Any) -> tuple[BulkClient, Clock, str]:
        clock = Clock()
        config.setdefault("static_tokens", {TOKEN: "alice"})
        runner = web.AppRunner(make_app(SandboxConfig(**config), clock=clock), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        client = OutreachClient(session, api_url=f"{url}/api/v2", timeout_s=5)
        return BulkClient(client), clock, url

    yield _start
    await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("ids", [[], (), iter([])])
def test_a_bulk_call_without_ids_cannot_be_built(ids: Any) -> None:
    with pytest.raises(ValueError, match="at least one prospect id"):
        ProspectIds(ids)


def test_only_prospect_ids_make_a_modification() -> None:
    with pytest.raises(TypeError, match="never empty"):
        BulkModification((), {"custom4": "a"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="never empty"):
        BulkModification([1], {"custom4": "a"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one field"):
        BulkModification(ProspectIds([1]), {})
    with pytest.raises(ValueError, match="reserved"):
        BulkModification(ProspectIds([1]), {"ids": [2]})
    for bad in ([0], [True], [1, 1], ["1"]):
        with pytest.raises(ValueError, match="prospect ids"):
            ProspectIds(bad)


async def test_modify_poll_and_read_every_item(start: Start) -> None:
    client, clock, _ = await start(
        bulk_records_per_s=1000, prospect_ids=(1, 2000), bulk_max_ids=5000
    )
    ids = ProspectIds(range(1, 2502))
    created = await client.modify(TOKEN, BulkModification(ids, {"custom4": "realized"}))
    assert created.error is None and created.value is not None
    assert created.response.headers["X-RateLimit-Remaining"] == "9999"
    batch = created.value
    assert (batch.total, batch.finished) == (2501, False)
    clock.now += 10
    polled = await client.batch(TOKEN, batch.id)
    assert polled.value is not None and polled.value.finished
    assert polled.value.failures == 501
    items, url = [], None
    while True:
        page = await client.items(TOKEN, batch.id, page_size=1000, url=url)
        assert page.value is not None, page.error
        items += page.value.items
        if page.value.next_url is None:
            break
        url = page.value.next_url
    assert sorted(i.prospect for i in items) == list(range(1, 2502))
    failed = {i.prospect for i in items if i.failed}
    assert failed == set(range(2001, 2502))
    assert all(i.info and "Could not find" in i.info for i in items if i.failed)


async def test_cancel(start: Start) -> None:
    client, _, _ = await start(bulk_fault="stick")
    created = await client.modify(TOKEN, BulkModification(ProspectIds([1]), {"custom4": "a"}))
    assert created.value is not None
    cancelled = await client.cancel(TOKEN, created.value.id)
    assert cancelled.value is not None and cancelled.value.canceled


async def test_an_answer_of_an_unexpected_shape_is_a_typed_error(start: Start) -> None:
    client, _, _ = await start(bulk_fault="malformed")
    answer = await client.modify(TOKEN, BulkModification(ProspectIds([1]), {"custom4": "a"}))
    assert isinstance(answer.error, UnexpectedAnswer)
    assert answer.value is None


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"data": []},
        {"data": {"id": "x", "attributes": {}}},
        {"data": {"id": 1, "attributes": {"pending": -1}}},
        {"data": {"id": 1, "type": "prospect", "attributes": {}}},
    ],
)
def test_batch_shapes_that_are_refused(doc: Any) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_batch(doc)


async def test_refusals_are_permanent_errors(start: Start) -> None:
    client, _, _ = await start(bulk_fault="forbidden")
    answer = await client.modify(TOKEN, BulkModification(ProspectIds([1]), {"custom4": "a"}))
    assert isinstance(answer.error, Permanent) and answer.error.status == 403


async def test_a_429_says_when_to_come_back(start: Start) -> None:
    client, clock, _ = await start(quota_limit=1)
    mod = BulkModification(ProspectIds([1]), {"custom4": "a"})
    assert (await client.modify(TOKEN, mod)).error is None
    answer = await client.modify(TOKEN, mod)
    assert isinstance(answer.error, RateLimited)
    assert answer.error.reset_s > clock.now


async def test_a_next_link_to_another_host_is_not_followed(start: Start) -> None:
    client, _, _ = await start()
    answer = await client.items(TOKEN, 1, page_size=10, url="https://elsewhere.example/x")
    assert isinstance(answer.error, UnexpectedAnswer)
