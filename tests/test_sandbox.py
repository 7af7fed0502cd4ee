"""The Outreach sandbox, exercised over real HTTP on an ephemeral port."""

from __future__ import annotations

import argparse
import asyncio
import math
import shlex
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from app.sandbox import SandboxConfig, add_arguments, config_from_args, make_app
from app.sandbox.quota import Quota

JSONAPI = "application/vnd.api+json"
TOKEN = "tok-alice"
CLIENT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
REDIRECT = "http://localhost:9999/callback"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Sandbox:
    url: str
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            text = await resp.text()
            try:
                body: Any = await resp.json(content_type=None)
            except ValueError:
                body = text
            return Reply(resp.status, dict(resp.headers), body)

    async def patch(
        self,
        prospect_id: int | str,
        attributes: dict[str, Any],
        *,
        token: str | None = TOKEN,
        content_type: str = JSONAPI,
        document: Any = None,
    ) -> Reply:
        if document is None:
            document = {"data": {"type": "prospect", "id": prospect_id, "attributes": attributes}}
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        path = f"/api/v2/prospects/{prospect_id}"
        return await self.call("PATCH", path, json=document, headers=headers)

    async def get(self, prospect_id: int, token: str = TOKEN) -> Reply:
        headers = {"Authorization": f"Bearer {token}"}
        return await self.call("GET", f"/api/v2/prospects/{prospect_id}", headers=headers)

    async def control(self, path: str, body: Any = None) -> Any:
        method = "GET" if body is None else "POST"
        reply = await self.call(method, "/_sandbox/" + path, json=body)
        assert reply.status == 200, reply.body
        return reply.body

    async def token(self, **form: str) -> Reply:
        return await self.call("POST", "/oauth/token", data=form)


Start = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def _start(**config: Any) -> Sandbox:
        config.setdefault("static_tokens", {TOKEN: "alice"})
        runner = web.AppRunner(make_app(SandboxConfig(**config)), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return Sandbox(f"http://{host}:{port}", session)

    yield _start
    await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sandbox(start: Start) -> Sandbox:
    return await start()


def error_of(reply: Reply) -> dict[str, Any]:
    errors = reply.body["errors"]
    assert len(errors) == 1
    error: dict[str, Any] = errors[0]
    return error


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def window_start(window_s: float) -> None:
    """Sleep until just after a fixed window boundary, so a burst fits in one window."""
    now = time.time()
    elapsed = now - math.floor(now / window_s) * window_s
    if elapsed > 0.1 * window_s:
        await asyncio.sleep(window_s - elapsed + 0.01)


# --- prospects API --------------------------------------------------------------------


async def test_patch_merges_attributes_and_get_returns_them(sandbox: Sandbox) -> None:
    first = await sandbox.patch(42, {"custom4": "realized", "firstName": "Ada", "tags": ["a"]})
    assert first.status == 200
    assert first.headers["Content-Type"].startswith(JSONAPI)
    assert first.body == {
        "data": {
            "type": "prospect",
            "id": 42,
            "attributes": {"custom4": "realized", "firstName": "Ada", "tags": ["a"]},
        }
    }
    second = await sandbox.patch(
        42, {"custom4": None, "score": 3.5}, content_type=f"{JSONAPI}; charset=utf-8"
    )
    assert second.status == 200
    expected = {"custom4": None, "firstName": "Ada", "tags": ["a"], "score": 3.5}
    assert second.body["data"]["attributes"] == expected
    assert (await sandbox.get(42)).body["data"]["attributes"] == expected
    assert await sandbox.control("prospects/42") == expected
    assert await sandbox.control("prospects") == {"42": expected}
    assert (await sandbox.get(7)).body["data"] == {"type": "prospect", "id": 7, "attributes": {}}


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_wrong_content_type_is_415(sandbox: Sandbox, content_type: str) -> None:
    reply = await sandbox.patch(1, {"custom1": "x"}, content_type=content_type)
    assert reply.status == 415
    assert error_of(reply)["id"] == "unsupportedMediaType"
    assert await sandbox.control("prospects") == {}


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        ({"data": {"type": "prospect", "id": 2, "attributes": {}}}, "/data/id"),
        ({"data": {"type": "prospect", "id": "1", "attributes": {}}}, "/data/id"),
        ({"data": {"type": "account", "id": 1, "attributes": {}}}, "/data/type"),
        ({"attributes": {"custom1": "x"}}, "/data"),
        ({"data": {"type": "prospect", "id": 1, "attributes": []}}, "/data/attributes"),
    ],
)
async def test_malformed_document_is_400(sandbox: Sandbox, document: Any, pointer: str) -> None:
    reply = await sandbox.patch(1, {}, document=document)
    assert reply.status == 400
    assert error_of(reply)["source"]["pointer"] == pointer


@pytest.mark.parametrize("name", ["favouriteColour", "custom0", "custom151", "custom007", "name"])
async def test_unknown_or_read_only_attribute_is_400(sandbox: Sandbox, name: str) -> None:
    reply = await sandbox.patch(1, {"firstName": "Ada", name: "x"})
    assert reply.status == 400
    assert error_of(reply)["source"]["pointer"] == f"/data/attributes/{name}"
    assert await sandbox.control("prospects") == {}


async def test_unusable_custom_field_is_400_naming_it(start: Start) -> None:
    sandbox = await start(usable_custom_fields=20)
    assert (await sandbox.patch(1, {"custom20": "ok"})).status == 200
    reply = await sandbox.patch(1, {"custom21": "no"})
    assert reply.status == 400
    error = error_of(reply)
    assert error["title"] == "Bad request"
    assert error["source"]["pointer"] == "/data/attributes/custom21"
    assert "custom21" in error["detail"]


@pytest.mark.parametrize(
    ("name", "ok_value", "bad_value"),
    [
        ("custom150", "x" * 32_000, "x" * 32_001),
        ("firstName", "x" * 255, "x" * 256),
        ("linkedInUrl", "x" * 1000, "x" * 1001),
        ("personalNote1", "x" * 65_535, "x" * 65_536),
        ("custom3", "text", 123),
        ("score", 7, "seven"),
        ("optedOut", True, "yes"),
        ("emails", ["a@example.com"], ["a@example.com", 5]),
    ],
)
async def test_rejected_value_is_422_with_pointer(
    sandbox: Sandbox, name: str, ok_value: Any, bad_value: Any
) -> None:
    assert (await sandbox.patch(9, {name: ok_value})).status == 200
    reply = await sandbox.patch(9, {name: bad_value})
    assert reply.status == 422
    error = error_of(reply)
    assert error["id"] == "validationError"
    assert error["source"]["pointer"] == f"/data/attributes/{name}"
    assert (await sandbox.control("prospects/9"))[name] == ok_value


async def test_prospect_outside_range_is_404(start: Start) -> None:
    sandbox = await start(prospect_ids=(1, 100))
    for bad in (0, 101, "abc"):
        reply = await sandbox.patch(bad, {"custom1": "x"})
        assert reply.status == 404
        error = error_of(reply)
        assert error["id"] == "resourceNotFound"
        assert error["detail"] == f"Could not find 'prospect' with ID '{bad}'."
    assert (await sandbox.get(101)).status == 404
    assert (await sandbox.patch(100, {"custom1": "x"})).status == 200


async def test_missing_unknown_or_expired_token_is_401(sandbox: Sandbox) -> None:
    await sandbox.control("tokens", {"access_token": "old", "user": "bob", "expires_in": 0})
    for token in (None, "nope", "old"):
        reply = await sandbox.patch(1, {"custom1": "x"}, token=token)
        assert reply.status == 401
        assert error_of(reply)["id"]
        assert "X-RateLimit-Remaining" not in reply.headers
    await sandbox.control("tokens", {"access_token": "fresh", "user": "bob", "expires_in": 60})
    assert (await sandbox.patch(1, {"custom1": "x"}, token="fresh")).status == 200


# --- quota ----------------------------------------------------------------------------


async def test_fixed_quota_counts_every_authenticated_request(start: Start) -> None:
    sandbox = await start(quota_limit=5, quota_window_s=1.0, quota_mode="fixed")
    await window_start(1.0)
    boundary = math.floor(time.time()) + 1
    remaining = []
    for i in range(5):
        content_type = "text/plain" if i == 2 else JSONAPI
        reply = await sandbox.patch(1, {"custom1": str(i)}, content_type=content_type)
        assert reply.status == (415 if i == 2 else 200)
        assert reply.headers["X-RateLimit-Limit"] == "5"
        assert reply.headers["X-RateLimit-Reset"] == str(boundary)
        remaining.append(int(reply.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    limited = await sandbox.patch(1, {"custom1": "late"})
    assert limited.status == 429
    assert error_of(limited) == {
        "id": "rateLimitExceeded",
        "title": "Rate Limit Exceeded",
        "detail": "You have exceeded your permitted rate limit of 5; "
        f"please try again at {iso(boundary)}.",
    }
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["X-RateLimit-Reset"] == str(boundary)
    assert limited.headers["Retry-After"] == "1"
    await asyncio.sleep(boundary - time.time() + 0.01)
    assert (await sandbox.patch(1, {"custom1": "again"})).status == 200


async def test_sliding_quota_frees_requests_one_window_after_they_were_made(start: Start) -> None:
    sandbox = await start(quota_limit=5, quota_window_s=1.0, quota_mode="sliding")
    for _ in range(3):
        assert (await sandbox.patch(1, {"custom1": "a"})).status == 200
    await asyncio.sleep(0.5)
    for _ in range(2):
        assert (await sandbox.patch(1, {"custom1": "b"})).status == 200
    limited = await sandbox.patch(1, {"custom1": "c"})
    assert limited.status == 429
    log = (await sandbox.control("requests?since=0"))["requests"]
    first_made = log[0]["time"]
    assert limited.headers["X-RateLimit-Reset"] == str(math.ceil(first_made + 1.0))
    assert iso(math.ceil(first_made + 1.0)) in error_of(limited)["detail"]
    await asyncio.sleep(log[2]["time"] + 1.02 - time.time())
    statuses = [(await sandbox.patch(1, {"custom1": "d"})).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_limit_is_formatted_with_thousands_separator(sandbox: Sandbox) -> None:
    status = await sandbox.control("quota/alice/spend", {"n": 10_000})
    assert status["remaining"] == 0
    reply = await sandbox.patch(1, {"custom1": "x"})
    assert reply.status == 429
    assert "permitted rate limit of 10,000; please try again at " in error_of(reply)["detail"]
    window_end = (math.floor(time.time() / 3600) + 1) * 3600
    assert reply.headers["X-RateLimit-Reset"] == str(window_end)
    assert error_of(reply)["detail"].endswith(f"{iso(window_end)}.")


async def test_spend_by_another_integration_shares_the_quota(start: Start) -> None:
    sandbox = await start(quota_limit=5, quota_window_s=60.0, quota_mode="sliding")
    status = await sandbox.control("quota/alice/spend", {"n": 3})
    assert (status["limit"], status["remaining"]) == (5, 2)
    assert (await sandbox.patch(1, {"custom1": "x"})).headers["X-RateLimit-Remaining"] == "1"
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 200
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 429
    stats = await sandbox.control("stats")
    assert stats["by_user"]["alice"]["requests"] == 3
    assert stats["by_user"]["alice"]["remaining"] == 0


async def test_forced_pause_answers_429_until_its_reset(sandbox: Sandbox) -> None:
    status = await sandbox.control("quota/alice/pause", {"reset_in_s": 0.6})
    until = status["reset"]
    assert status["remaining"] == 0
    reply = await sandbox.patch(1, {"custom1": "x"})
    assert reply.status == 429
    assert reply.headers["X-RateLimit-Reset"] == str(until)
    assert error_of(reply)["detail"].endswith(f"please try again at {iso(until)}.")
    assert (await sandbox.control("stats"))["by_user"]["alice"]["reset"] == until
    await asyncio.sleep(0.65)
    reply = await sandbox.patch(1, {"custom1": "x"})
    assert reply.status == 200
    assert reply.headers["X-RateLimit-Remaining"] == "9999"


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({}, {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"}),
        ({"send_retry_after": False}, {"X-RateLimit-Reset"}),
        ({"send_ratelimit_headers": False}, {"Retry-After"}),
        ({"send_ratelimit_headers": False, "send_retry_after": False}, set()),
    ],
)
async def test_rate_limit_headers_are_switchable(
    start: Start, switches: dict[str, bool], expected: set[str]
) -> None:
    sandbox = await start(quota_limit=1, **switches)
    ok = await sandbox.patch(1, {"custom1": "x"})
    limited = await sandbox.patch(1, {"custom1": "x"})
    assert limited.status == 429
    assert "please try again at" in error_of(limited)["detail"]
    assert "Retry-After" not in ok.headers
    for header in ("X-RateLimit-Reset", "Retry-After"):
        assert (header in limited.headers) == (header in expected)
    assert ("X-RateLimit-Remaining" in ok.headers) == ("X-RateLimit-Reset" in expected)


def test_quota_unit_fixed_window_is_aligned_to_the_epoch() -> None:
    now = [7_200.0 + 1_799.5]
    quota = Quota(limit=2, window_s=3_600, mode="fixed", clock=lambda: now[0])
    assert quota.hit("u").allowed and quota.hit("u").allowed
    denied = quota.hit("u")
    assert not denied.allowed
    assert (denied.status.remaining, denied.status.reset_epoch_s) == (0, 10_800)
    now[0] = 10_800.0
    assert quota.hit("u").status.remaining == 1


def test_quota_unit_sliding_window_spend_and_pause() -> None:
    now = [1_000.0]
    quota = Quota(limit=3, window_s=10, mode="sliding", clock=lambda: now[0])
    quota.spend("u", 2)
    now[0] = 1_004.0
    assert quota.hit("u").status == quota.status("u")
    denied = quota.hit("u")
    assert not denied.allowed and denied.status.reset == 1_010.0
    now[0] = 1_010.0
    assert quota.status("u").remaining == 2
    quota.force_429("u", 1_020.5)
    assert quota.status("u").reset_epoch_s == 1_021 and not quota.hit("u").allowed
    now[0] = 1_020.5
    assert quota.hit("u").allowed
    assert quota.status("other").remaining == 3


# --- faults ---------------------------------------------------------------------------


async def statuses_of(sandbox: Sandbox, n: int) -> list[int]:
    return [(await sandbox.patch(1, {"custom1": "x"})).status for _ in range(n)]


async def test_seeded_5xx_faults_hit_the_configured_share(start: Start) -> None:
    sandbox = await start(fault_5xx_rate=0.25, fault_seed=11)
    statuses = await statuses_of(sandbox, 200)
    failures = Counter(s for s in statuses if s >= 500)
    assert set(failures) == {500, 502, 503}
    assert 30 <= sum(failures.values()) <= 70
    assert set(statuses) == {200, 500, 502, 503}
    await sandbox.control(
        "reset", {"fault_5xx_rate": 0.25, "fault_seed": 11, "static_tokens": {TOKEN: "alice"}}
    )
    assert await statuses_of(sandbox, 200) == statuses


async def test_503_maintenance_says_when_to_try_again(start: Start) -> None:
    sandbox = await start(fault_5xx_rate=1.0, fault_seed=3)
    for _ in range(30):
        reply = await sandbox.patch(1, {"custom1": "x"})
        assert reply.status in (500, 502, 503)
        assert "X-RateLimit-Remaining" in reply.headers
        if reply.status == 503:
            error = error_of(reply)
            assert error["id"] == "scheduledServerMaintenance"
            again = error["detail"].rsplit("please try again at ", 1)[1].rstrip(".")
            ahead = datetime.fromisoformat(again).replace(tzinfo=UTC).timestamp() - time.time()
            assert 0 < ahead <= 5
            break
    else:
        pytest.fail("no 503 in 30 faulty answers")
    assert (await sandbox.control("prospects")) == {}


async def test_dropped_connection_is_seen_as_disconnect(start: Start) -> None:
    sandbox = await start(fault_drop_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await sandbox.patch(1, {"custom1": "x"})
    assert (await sandbox.control("stats"))["by_status"]["0"] >= 1
    await sandbox.control("config", {"fault_drop_rate": 0.0})
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 200


async def test_latency_fault_delays_answers(start: Start) -> None:
    sandbox = await start(fault_latency_ms=(80, 120), fault_seed=1)
    began = time.perf_counter()
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 200
    assert time.perf_counter() - began >= 0.08


async def test_hundreds_of_concurrent_patches(sandbox: Sandbox) -> None:
    began = time.perf_counter()
    replies = await asyncio.gather(*(sandbox.patch(i, {"custom2": str(i)}) for i in range(1, 401)))
    assert {r.status for r in replies} == {200}
    assert time.perf_counter() - began < 5
    stats = await sandbox.control("stats")
    assert stats["patches_ok"] == 400
    assert stats["by_user"]["alice"]["remaining"] == 10_000 - 400


# --- OAuth ----------------------------------------------------------------------------


async def authorize(sandbox: Sandbox, **extra: str) -> dict[str, str]:
    query = {"client_id": "sandbox-client", "redirect_uri": REDIRECT, "response_type": "code"}
    query |= {"scope": "prospects.all", "state": "s-1"} | extra
    url = URL(sandbox.url + "/oauth/authorize").with_query(query)
    async with sandbox.session.get(url, allow_redirects=False) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert str(location.with_query(None)) == REDIRECT
    return dict(location.query)


async def exchange(sandbox: Sandbox, code: str, redirect_uri: str = REDIRECT) -> Reply:
    return await sandbox.token(
        grant_type="authorization_code", code=code, redirect_uri=redirect_uri, **CLIENT
    )


async def test_code_flow_and_refresh_rotation(sandbox: Sandbox) -> None:
    query = await authorize(sandbox, user="carol")
    assert query["state"] == "s-1"
    first = await exchange(sandbox, query["code"])
    assert first.status == 200
    assert first.body["token_type"] == "bearer"
    assert first.body["expires_in"] == 7200
    assert first.body["scope"] == "prospects.all"
    assert abs(first.body["created_at"] - time.time()) < 5
    assert (
        await sandbox.patch(1, {"custom1": "x"}, token=first.body["access_token"])
    ).status == 200
    assert (await exchange(sandbox, query["code"])).body == {"error": "invalid_grant"}

    refresh = first.body["refresh_token"]
    second = await sandbox.token(grant_type="refresh_token", refresh_token=refresh, **CLIENT)
    assert second.status == 200
    assert second.body["refresh_token"] != refresh
    assert second.body["access_token"] != first.body["access_token"]
    reused = await sandbox.token(grant_type="refresh_token", refresh_token=refresh, **CLIENT)
    assert (reused.status, reused.body) == (400, {"error": "invalid_grant"})
    assert (
        await sandbox.patch(1, {"custom1": "y"}, token=second.body["access_token"])
    ).status == 200

    stats = await sandbox.control("stats")
    assert stats["token_calls"] == {"authorization_code": 2, "refresh_token": 2}
    assert stats["by_user"]["carol"]["requests"] == 2


async def test_token_endpoint_rejects_bad_client_and_mismatched_redirect(sandbox: Sandbox) -> None:
    code = (await authorize(sandbox))["code"]
    bad_client = await sandbox.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        client_id="sandbox-client",
        client_secret="wrong",
    )
    assert (bad_client.status, bad_client.body) == (401, {"error": "invalid_client"})
    mismatch = await exchange(sandbox, code, redirect_uri="http://localhost:9999/other")
    assert (mismatch.status, mismatch.body) == (400, {"error": "invalid_grant"})
    assert (await exchange(sandbox, "made-up")).body == {"error": "invalid_grant"}


async def test_denied_authorization_redirects_with_access_denied(sandbox: Sandbox) -> None:
    assert await authorize(sandbox, deny="1") == {"error": "access_denied", "state": "s-1"}
    await sandbox.control("config", {"deny_authorize": True})
    assert (await authorize(sandbox))["error"] == "access_denied"
    query = {"client_id": "someone-else", "redirect_uri": REDIRECT, "response_type": "code"}
    url = URL(sandbox.url + "/oauth/authorize").with_query(query)
    async with sandbox.session.get(url, allow_redirects=False) as resp:
        assert resp.status == 400


async def test_token_endpoint_429_retry_later(sandbox: Sandbox) -> None:
    code = (await authorize(sandbox))["code"]
    config = await sandbox.control("config", {"token_429_next": 2})
    assert config["token_429_next"] == 2
    for _ in range(2):
        reply = await exchange(sandbox, code)
        assert (reply.status, reply.body) == (429, "Retry later")
    assert (await exchange(sandbox, code)).status == 200
    assert (await sandbox.control("config"))["token_429_next"] == 0
    assert (await sandbox.control("stats"))["token_calls"]["authorization_code"] == 3


async def test_revoking_refresh_token_or_user(sandbox: Sandbox) -> None:
    issued = (await exchange(sandbox, (await authorize(sandbox, user="dan"))["code"])).body
    assert await sandbox.control("tokens/revoke", {"refresh_token": issued["refresh_token"]}) == {
        "revoked": 1
    }
    assert (await sandbox.patch(1, {"custom1": "x"}, token=issued["access_token"])).status == 401
    refreshed = await sandbox.token(
        grant_type="refresh_token", refresh_token=issued["refresh_token"], **CLIENT
    )
    assert refreshed.body == {"error": "invalid_grant"}

    registered = await sandbox.control(
        "tokens", {"access_token": "a-1", "user": "erin", "refresh_token": "r-1"}
    )
    assert registered == {
        "access_token": "a-1",
        "user": "erin",
        "refresh_token": "r-1",
        "expires_at": None,
    }
    assert (await sandbox.patch(1, {"custom1": "x"}, token="a-1")).status == 200
    assert (await sandbox.control("tokens/revoke", {"user": "alice"}))["revoked"] == 1
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 401
    assert (await sandbox.patch(1, {"custom1": "x"}, token="a-1")).status == 200
    rotated = await sandbox.token(grant_type="refresh_token", refresh_token="r-1", **CLIENT)
    assert rotated.status == 200


# --- control API and CLI --------------------------------------------------------------


async def test_stats_request_log_and_reset(sandbox: Sandbox) -> None:
    before = time.time()
    await sandbox.patch(5, {"custom1": "x", "lastName": "Lovelace"})
    await sandbox.patch(5, {"custom1": "y"})
    await sandbox.patch(6, {"custom1": "x"}, content_type="application/json")
    await sandbox.patch(6, {"custom1": "x"}, token="nope")
    stats = await sandbox.control("stats")
    reset_at = stats["by_user"]["alice"].pop("reset")
    assert reset_at > before
    assert stats == {
        "requests": 4,
        "by_status": {"200": 2, "401": 1, "415": 1},
        "patches_ok": 2,
        "patch_count_by_prospect": {"5": 2},
        "rate_limited": 0,
        "token_calls": {"authorization_code": 0, "refresh_token": 0},
        "by_user": {"alice": {"requests": 3, "charged": 3, "remaining": 9_997}},
        "bulk": {
            "batches": 0,
            "records": 0,
            "records_modified": 0,
            "records_failed": 0,
            "by_state": {},
        },
    }
    log = await sandbox.control(f"requests?since={before}")
    first = log["requests"][0]
    assert first["time"] > before and log["now"] >= first["time"]
    assert {k: v for k, v in first.items() if k != "time"} == {
        "method": "PATCH",
        "path": "/api/v2/prospects/5",
        "user": "alice",
        "status": 200,
        "prospect_id": 5,
        "attributes": ["custom1", "lastName"],
    }
    assert [e["user"] for e in log["requests"]] == ["alice", "alice", "alice", None]
    later = await sandbox.control(f"requests?since={log['requests'][1]['time']}")
    assert [e["status"] for e in later["requests"]] == [415, 401]

    reset = await sandbox.control("reset", {})
    assert reset["ok"] is True and reset["config"]["static_tokens"] == {TOKEN: "alice"}
    assert (await sandbox.control("stats"))["requests"] == 0
    assert await sandbox.control("prospects") == {}
    assert (await sandbox.patch(5, {"custom1": "x"})).headers["X-RateLimit-Remaining"] == "9999"


async def test_config_update_is_partial_and_validated(sandbox: Sandbox) -> None:
    config = await sandbox.control("config", {"quota_limit": 2, "usable_custom_fields": 10})
    assert (config["quota_limit"], config["usable_custom_fields"]) == (2, 10)
    assert config["static_tokens"] == {TOKEN: "alice"}
    assert (await sandbox.patch(1, {"custom11": "x"})).status == 400
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 200
    assert (await sandbox.patch(1, {"custom1": "x"})).status == 429
    for bad in ({"quota_mode": "hourly"}, {"no_such_knob": 1}, {"fault_latency_ms": [5, 1]}):
        reply = await sandbox.call("POST", "/_sandbox/config", json=bad)
        assert reply.status == 400 and "error" in reply.body
    bad_reset = await sandbox.call("POST", "/_sandbox/reset", json={"quota_limit": -1})
    assert bad_reset.status == 400
    assert (await sandbox.control("config"))["quota_limit"] == 2


def test_cli_options_build_a_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        shlex.split(
            "--port 0 --quota-limit 5 --quota-window-s 1 --quota-mode sliding "
            "--usable-custom-fields 20 --static-token t1=alice --static-token t2=bob "
            "--fault-latency-ms 1 5 --no-retry-after"
        )
    )
    assert (ns.host, ns.port) == ("127.0.0.1", 0)
    config = config_from_args(ns)
    assert config.quota_limit == 5 and config.quota_window_s == 1.0
    assert config.quota_mode == "sliding" and config.usable_custom_fields == 20
    assert config.static_tokens == {"t1": "alice", "t2": "bob"}
    assert config.fault_latency_ms == (1, 5)
    assert config.send_ratelimit_headers and not config.send_retry_after
    assert config_from_args(parser.parse_args([])) == SandboxConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["--static-token", "no-user"])


async def test_types_lists_the_usable_custom_fields_and_a_typed_one_refuses_text(
    start: Start,
) -> None:
    sandbox = await start(usable_custom_fields=3, custom_field_types={2: "number"})
    reply = await sandbox.call("GET", "/api/v2/types", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200 and reply.headers["X-RateLimit-Remaining"] == "9999"
    types = {row["attributes"]["fieldName"]: row["attributes"] for row in reply.body["data"]}
    assert {name: t["validationType"] for name, t in types.items()} == {
        "custom1": "text",
        "custom2": "number",
        "custom3": "text",
    }
    assert (await sandbox.patch(9, {"custom2": "12.5"})).status == 200
    refused = await sandbox.patch(9, {"custom2": "realized"})
    assert (
        refused.status == 422
        and error_of(refused)["source"]["pointer"] == "/data/attributes/custom2"
    )
    assert (await sandbox.call("GET", "/api/v2/types")).status == 401
