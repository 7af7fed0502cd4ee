"""The HTTP API at its edges (issue 19): bodies that cannot be parsed, admin writes a browser
sends for another site, clients that stall or leave, multi-member gzip, empty parameters, and
the open development API's Host check. Raw sockets where a client misbehaves on purpose."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from app.api.app import make_app
from app.api.server import ApiRunner
from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import e2e_config, free_port, make_settings, profile, settings_env

ADMIN_KEY = "http-edges-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
MAX_BODY = 200_000
#: OAuth configured, so that an authorization that gets through answers 201 (not 503).
OAUTH = {"OUTREACH_CLIENT_ID": "edges", "OUTREACH_CLIENT_SECRET": "edges-secret"}
Start = Callable[..., Awaitable[tuple[str, int]]]


@pytest.fixture
async def start(prefix: str, rclient: redis.Redis) -> AsyncIterator[Start]:
    """Start the real API as ``outreach-sync api`` serves it (``ApiRunner``), destination e2e
    published; ``admin=False`` leaves the admin surface open (development). Returns the base
    URL and the port."""
    publish_sync(rclient, Keys(prefix), e2e_config())
    runners: list[web.AppRunner] = []

    async def run(*, admin: bool = True, header_timeout_s: float = 10, **extra: str) -> Any:
        keys = {"ADMIN_API_KEY": ADMIN_KEY} if admin else {}
        env = settings_env(prefix, None, MAX_BODY_BYTES=str(MAX_BODY), **keys, **OAUTH)
        env.update(extra)
        runner = ApiRunner(make_app(make_settings(env)), header_timeout_s=header_timeout_s)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}", port

    yield run
    for runner in runners:
        await runner.cleanup()


async def call(
    method: str, url: str, *, body: bytes | str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.request(method, url, data=body, headers=headers or {}, allow_redirects=False) as r,
    ):
        text = await r.text()
        return r.status, json.loads(text) if r.content_type == "application/json" else text


def detail(doc: Any) -> str:
    return str(doc["errors"][0]["detail"])


# (4) JSON that cannot be held -------------------------------------------------------------


async def test_json_too_deep_or_with_a_huge_integer_is_a_400_that_says_so(start: Start) -> None:
    base, _ = await start()
    deep = "[" * 10_000 + "]" * 10_000
    huge = '{"id": ' + "7" * 5_000 + "}"
    for path in ("/v1/admin/destinations", "/v1/admin/connections/c/authorize"):
        status, doc = await call("POST", base + path, body=deep, headers=JSON_AUTH)
        assert status == 400 and "nested too deeply" in detail(doc), (path, doc)
        status, doc = await call("POST", base + path, body=huge, headers=JSON_AUTH)
        assert status == 400 and "more than 4300 digits" in detail(doc), (path, doc)
    url = f"{base}/v1/destinations/e2e/profiles"
    for body in (deep, huge):
        assert (await call("POST", url, body=body, headers=JSON_AUTH))[0] == 400


# (5) every admin write behind the same guard ----------------------------------------------


async def test_an_authorization_another_site_sends_is_refused_and_stores_no_state(
    start: Start, rclient: redis.Redis, prefix: str
) -> None:
    base, _ = await start()
    url = f"{base}/v1/admin/connections/c/authorize"
    form = {**AUTH, "Content-Type": "text/plain"}  # what an HTML form sends, empty here
    cross = {**form, "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    assert (await call("POST", url, body=b"", headers=cross))[0] == 403
    assert (await call("POST", url, body=b"", headers=form))[0] == 415
    no_cors = {**AUTH, "Origin": "https://evil.example"}  # fetch(mode: "no-cors"), no body
    assert (await call("POST", url, headers=no_cors))[0] == 403
    assert list(rclient.scan_iter(match=f"{prefix}:oauthstate:*")) == []
    for method, path in (
        ("DELETE", "/v1/admin/destinations/e2e"),
        ("DELETE", "/v1/admin/connections/c"),
        ("PATCH", "/v1/admin/destinations/e2e"),
    ):
        status, doc = await call(method, base + path, body=b"{}", headers={**JSON_AUTH, **cross})
        assert status == 403 and doc["errors"][0]["title"] == "Cross-site request refused"
    # A server: an empty JSON body, or a JSON object.
    assert (await call("POST", url, body=b"", headers=JSON_AUTH))[0] == 201
    assert (await call("POST", url, body=b'{"user": "ops"}', headers=JSON_AUTH))[0] == 201


# (7) clients that stall -------------------------------------------------------------------


@asynccontextmanager
async def _raw(
    port: int, data: bytes
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection that has sent ``data``; closed on leaving."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def _post(path: str, length: int, body: bytes = b"") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    return head.encode() + body


async def test_stalled_headers_and_bodies_are_let_go_and_a_declared_excess_refused_at_once(
    start: Start,
) -> None:
    _, port = await start(header_timeout_s=0.5, API_BODY_TIMEOUT_S="1")
    began = time.monotonic()
    half_headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    async with _raw(port, half_headers) as (reader, _):
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
    assert time.monotonic() - began < 3
    async with _raw(port, b"") as (reader, _):  # nothing at all: let go the same way
        assert await asyncio.wait_for(reader.read(), 5) == b""
    # The deadline is per request: a kept-alive connection idle past it still serves the next.
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with _raw(port, request) as (reader, writer):
        for again in (True, False):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if again:
                await asyncio.sleep(0.8)
                writer.write(request)
    began = time.monotonic()
    async with _raw(port, _post("/v1/admin/destinations", 100, b"{")) as (reader, _):
        status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert time.monotonic() - began < 4
    began = time.monotonic()
    async with _raw(port, _post("/v1/admin/destinations", 50 * MAX_BODY)) as (reader, _):
        status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert time.monotonic() - began < 1


# (8) a client that leaves -----------------------------------------------------------------


async def test_a_client_leaving_mid_body_is_one_info_line(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = await start()
    with caplog.at_level(logging.INFO):
        async with _raw(port, _post("/v1/admin/destinations", 1000, b'{"id": "x')):
            await asyncio.sleep(0.2)
        for _ in range(50):
            if any(r.name == "app.api.bodies" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    server = [r for r in caplog.records if r.name.startswith(("app.api", "aiohttp.server"))]
    assert [(r.levelno, r.exc_info) for r in server] == [(logging.INFO, None)], server
    assert "went away" in server[0].getMessage()


# (9) gzip members -------------------------------------------------------------------------


async def test_a_gzip_body_of_several_members_is_one_body_still_bounded(start: Start) -> None:
    base, _ = await start()
    url = f"{base}/v1/destinations/e2e/profiles"
    gz = {**AUTH, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    lines = [json.dumps(profile(pid)).encode() + b"\n" for pid in ("41", "42")]
    status, doc = await call("POST", url, body=b"".join(map(gzip.compress, lines)), headers=gz)
    assert status == 202 and doc["accepted"] == 2, doc
    half = b"\n" * (MAX_BODY // 2 + 1)  # each member under the bound, both together over it
    status, doc = await call("POST", url, body=gzip.compress(half) * 2, headers=gz)
    assert status == 413, doc


# (10) empty parameters --------------------------------------------------------------------


async def test_empty_or_overlong_parameters_are_refused_as_the_spec_says(start: Start) -> None:
    base, _ = await start()
    for hours in ("", "1" * 5_000):
        status, doc = await call(
            "GET", f"{base}/v1/destinations/e2e/status?hours={hours}", headers=AUTH
        )
        assert status == 400 and "hours" in detail(doc), doc
        assert (await call("GET", f"{base}/status?hours={hours}", headers=AUTH))[0] == 400
    start_url = f"{base}/oauth/start?connection=c&user="
    status, page = await call("GET", start_url, headers=AUTH)
    assert status == 400 and "user" in page
    assert (await call("GET", f"{base}/oauth/start?connection=c", headers=AUTH))[0] == 302


# (11) the open development API and DNS rebinding ------------------------------------------


async def test_the_open_api_answers_only_loopback_and_allowed_host_names(start: Start) -> None:
    base, port = await start(admin=False, API_ALLOWED_HOSTS="sync.internal")
    listing = f"{base}/v1/admin/destinations"
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "["):
        status, doc = await call("GET", listing, headers={"Host": host})
        assert status == 421 and "Host" in detail(doc), (host, doc)
    body = json.dumps({"enabled": False})
    patch = {"Host": "evil.example", "Content-Type": "application/json"}
    assert (await call("PATCH", f"{listing}/e2e", body=body, headers=patch))[0] == 421
    assert (await call("GET", f"{base}/status", headers={"Host": "evil.example"}))[0] == 421
    for host in ("localhost", f"localhost:{port}", "127.0.0.9", f"[::1]:{port}", "sync.internal"):
        assert (await call("GET", listing, headers={"Host": host}))[0] == 200, host
    assert (await call("GET", f"{base}/status"))[0] == 200
