"""The HTTP API as an outsider meets it: cross-site writes, compressed and malformed bodies,
weak and guessed keys, Redis away, malformed requests, and the spec's promises (issue 14)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from app.api.app import make_app
from app.core.keys import Keys
from app.core.redaction import redact_text
from app.ingest.batch import MalformedDocument, read_profiles
from app.store.registry import publish_sync
from tests.support import (
    ROOT,
    e2e_config,
    free_port,
    make_settings,
    profile,
    settings_env,
    wait_until,
)

ADMIN_KEY = "front-door-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def start(prefix: str, rclient: redis.Redis) -> AsyncIterator[Start]:
    """Start the real API (destination e2e published); returns its base URL."""
    publish_sync(rclient, Keys(prefix), e2e_config())
    runners: list[web.AppRunner] = []

    async def run(**extra: str) -> str:
        env = settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY, MAX_BODY_BYTES="200000")
        env.update(extra)
        runner = web.AppRunner(make_app(make_settings(env)))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield run
    for runner in runners:
        await runner.cleanup()


async def call(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, Any]:
    """Status, content type and body (JSON when it is JSON) of one request."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.request(method, url, data=body, headers=headers or {}) as r,
    ):
        text = await r.text()
        doc = json.loads(text) if r.content_type == "application/json" else text
        return r.status, r.content_type, doc


def pending(rclient: redis.Redis, prefix: str) -> list[bytes]:
    return list(rclient.scan_iter(match=f"{prefix}:*pending*"))


# (2) cross-site writes --------------------------------------------------------------------


async def test_what_a_cross_site_form_can_send_never_reaches_the_store(
    start: Start, rclient: redis.Redis, prefix: str
) -> None:
    base = await start()
    url = f"{base}/v1/destinations/e2e/profiles"
    body = json.dumps(profile("42", firstName="Mallory")).encode()
    json_auth = {**AUTH, "Content-Type": "application/json"}
    # What an HTML form can send: its three encodings (with the key a browser would resend).
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, doc = await call("POST", url, body=body, headers={**AUTH, "Content-Type": ctype})
        assert status == 415, (ctype, doc)
        assert "application/json" in doc["errors"][0]["detail"]
    # A browser's own word that the request comes from another site.
    for marks in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        status, _, doc = await call("POST", url, body=body, headers={**json_auth, **marks})
        assert status == 403 and doc["errors"][0]["title"] == "Cross-site request refused"
    assert pending(rclient, prefix) == []
    # The admin key as HTTP Basic (what a browser caches and resends) is no producer key.
    basic = {"Authorization": aiohttp.encode_basic_auth("ops", ADMIN_KEY)}
    headers = {**basic, "Content-Type": "application/json"}
    status, _, doc = await call("POST", url, body=body, headers=headers)
    assert status == 401 and "Basic" in doc["errors"][0]["detail"]
    # Servers, and a page of our own origin, still write.
    same = {**json_auth, "Origin": base, "Sec-Fetch-Site": "same-origin"}
    assert (await call("POST", url, body=body, headers=same))[0] == 202
    ndjson = {**AUTH, "Content-Type": "application/x-ndjson"}
    assert (await call("POST", url, body=body, headers=ndjson))[0] == 202


# (3) open by default ----------------------------------------------------------------------


def test_an_open_admin_surface_is_announced_and_kept_on_loopback(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from app.ops.startup import check_startup, exposure_problems

    settings = make_settings(settings_env(prefix, None))
    with caplog.at_level(logging.WARNING, logger="app.ops.startup"):
        check_startup(settings)
    assert any("ADMIN_API_KEY is not set" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.ops.startup"):
        check_startup(settings, serves_api=False)  # a worker: it serves no admin surface
    assert not any("ADMIN_API_KEY" in r.getMessage() for r in caplog.records)
    assert exposure_problems(settings, "127.0.0.1") == []
    assert exposure_problems(settings, "::1") == []
    [problem] = exposure_problems(settings, "0.0.0.0")
    assert "ADMIN_API_KEY" in problem
    keyed = make_settings(settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY))
    assert exposure_problems(keyed, "0.0.0.0") == []
    env = {**os.environ, **settings_env(prefix, None)}
    env.pop("ADMIN_API_KEY", None)
    cmd = [sys.executable, "-m", "app", "api", "--host", "0.0.0.0", "--port", str(free_port())]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a loopback address" in done.stderr


# (4) compressed bodies --------------------------------------------------------------------


async def test_compressed_bodies_are_inflated_after_auth_bounded_and_checked(
    start: Start, rclient: redis.Redis, prefix: str
) -> None:
    base = await start()
    url = f"{base}/v1/destinations/e2e/profiles"
    gz = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    good = gzip.compress(json.dumps(profile("42")).encode())
    assert (await call("POST", url, body=good, headers={**AUTH, **gz}))[0] == 202
    deflated = zlib.compress(json.dumps(profile("43")).encode())
    deflate = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "deflate"}
    assert (await call("POST", url, body=deflated, headers=deflate))[0] == 202
    bomb = gzip.compress(b"\n" * 50_000_000, compresslevel=9)  # 50 MB inflated, ~50 kB sent
    assert (await call("POST", url, body=bomb, headers=gz))[0] == 401  # never inflated
    status, ctype, doc = await call("POST", url, body=bomb, headers={**AUTH, **gz})
    assert status == 413 and ctype == "application/json", doc
    for broken in (b"not gzip at all", good[:-12], good + b"trailing"):
        status, ctype, doc = await call("POST", url, body=broken, headers={**AUTH, **gz})
        assert status == 400 and ctype == "application/json", (broken[:20], doc)
        assert doc["errors"][0]["title"] == "Bad content encoding"
    br = {**AUTH, **gz, "Content-Encoding": "br"}
    assert (await call("POST", url, body=good, headers=br))[0] == 415


# (5) a malformed JSON document -----------------------------------------------------------


async def test_a_broken_json_document_is_a_400_naming_the_position_and_stores_nothing(
    start: Start, rclient: redis.Redis, prefix: str
) -> None:
    base = await start()
    doc = json.dumps({"profiles": [profile("41"), profile("42")]}, indent=2)
    broken = doc.replace("}\n  ]", "},\n  ]")  # a trailing comma after the last profile
    assert broken != doc
    headers = {**AUTH, "Content-Type": "application/json"}
    url = f"{base}/v1/destinations/e2e/profiles"
    status, _, answer = await call("POST", url, body=broken.encode(), headers=headers)
    assert status == 400, answer
    detail = answer["errors"][0]["detail"]
    assert "line" in detail and "column" in detail and "nothing" in detail
    assert pending(rclient, prefix) == []
    ndjson = json.dumps(profile("41")) + "\n" + json.dumps(profile("42"))
    status, _, answer = await call("POST", url, body=ndjson.encode(), headers=headers)
    assert status == 400 and "application/x-ndjson" in answer["errors"][0]["detail"]
    assert pending(rclient, prefix) == []


def test_without_a_content_type_the_shape_decides_never_a_fallback() -> None:
    one = json.dumps(profile("1"))
    pretty = json.dumps({"profiles": [profile("1"), profile("2")]}, indent=2)
    assert len(list(read_profiles(pretty))) == 2
    assert len(list(read_profiles(one + "\n" + one + "\n"))) == 2
    with pytest.raises(MalformedDocument, match="line 4 column 7"):
        list(read_profiles(pretty.replace('"identityMap"', "identityMap", 1)))
    # Declared NDJSON: a broken line is that profile's problem only.
    lines = list(read_profiles(one + "\n{oops\n", media_type="application/x-ndjson"))
    assert len(lines) == 2 and type(lines[1]).__name__ == "InvalidJSON"


def test_the_cli_refuses_a_broken_document_whole(prefix: str, rclient: redis.Redis) -> None:
    publish_sync(rclient, Keys(prefix), e2e_config())
    pretty = json.dumps({"profiles": [profile("41"), profile("42")]}, indent=2)
    out = subprocess.run(
        [sys.executable, "-m", "app", "ingest", "-", "-d", "e2e"],
        input=pretty.replace("}\n  ]", "},\n  ]"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **settings_env(prefix, None)},
        timeout=60,
    )
    assert out.returncode == 2 and "not valid JSON at line" in out.stderr
    assert "Traceback" not in out.stderr
    assert pending(rclient, prefix) == []


# (6) keys ------------------------------------------------------------------------------


def test_production_refuses_a_weak_admin_key(prefix: str) -> None:
    from cryptography.fernet import Fernet

    from app.ops.startup import startup_problems

    env = {"APP_ENV": "production", "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    for weak in ("x", "admin-secret", "a" * 40):
        problems = startup_problems(make_settings({**env, "ADMIN_API_KEY": weak}))
        assert any("ADMIN_API_KEY is too weak" in p for p in problems), weak
    assert startup_problems(make_settings({**env, "ADMIN_API_KEY": ADMIN_KEY})) == []


async def test_wrong_keys_are_throttled_per_address_across_processes(start: Start) -> None:
    one = await start(AUTH_FAILURE_LIMIT="5/minute")
    other = await start(AUTH_FAILURE_LIMIT="5/minute")  # a second API process, same Redis
    wrong = {"Authorization": "Bearer not-the-key"}
    for _ in range(5):
        status, _, _ = await call("GET", f"{one}/v1/admin/destinations", headers=wrong)
        assert status == 401
    for base, headers in ((one, wrong), (other, wrong), (other, AUTH)):
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{base}/v1/admin/destinations", headers=headers) as r,
        ):
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0
    # Producer routes count too; a request without any key is not an attempt.
    assert (await call("GET", f"{one}/healthz"))[0] == 200


# (7) Redis down -------------------------------------------------------------------------


async def test_with_redis_down_each_route_answers_in_its_own_terms(start: Start) -> None:
    base = await start(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    hdrs = {**AUTH, "Content-Type": "application/json"}
    dest = e2e_config().destinations[0].model_dump(mode="json")
    body = json.dumps({**dest, "id": "fresh"}).encode()
    status, _, doc = await call("POST", f"{base}/v1/admin/destinations", body=body, headers=hdrs)
    assert status == 503 and "merge by version" not in doc["errors"][0]["detail"]
    assert "may not have been made" in doc["errors"][0]["detail"]
    status, _, doc = await call("GET", f"{base}/v1/admin/connections", headers=AUTH)
    assert status == 503 and "cannot be read" in doc["errors"][0]["detail"]
    for page in ("/status", "/status/e2e", "/oauth/callback?state=abc&code=x"):
        status, ctype, _ = await call("GET", base + page, headers=AUTH)
        assert (status, ctype) == (503, "text/html"), page
    status, _, doc = await call("GET", f"{base}/readyz")
    assert status == 503 and doc == {"status": "unavailable", "redis": "unreachable"}


# (8) noise ------------------------------------------------------------------------------


def test_a_malformed_request_is_one_quiet_log_line_and_never_echoed(prefix: str) -> None:
    port = free_port()
    env = {**os.environ, **settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY)}
    env.update(LOG_LEVEL="INFO", LOG_FORMAT="json")
    cmd = [sys.executable, "-m", "app", "api", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _answers(port), timeout_s=30, what="the API")
        key = "osk_s3cr3t-producer-key"
        for raw in (
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\x01\r\n\r\n",
            "GET /heal thz HTTP/1.1 junk\r\nHost: x\r\n\r\n",
        ):
            answer = _send_raw(port, raw.encode())
            assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400")
            assert key.encode() not in answer and b"healthz" not in answer.split(b"\r\n\r\n")[1]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    noisy = [r for r in records if r["level"] == "ERROR" or "exc" in r]
    assert noisy == [], noisy
    assert sum("malformed request" in r["message"] for r in records) == 2
    assert "s3cr3t" not in err


def _answers(port: int) -> bool:
    try:
        return b"200" in _send_raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[:20]
    except OSError:
        return False


def _send_raw(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if raw.startswith(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
                break
        return b"".join(chunks)


def test_redaction_leaves_prose_that_names_a_key_alone() -> None:
    prose = "connection c1 needs re-authorization: Outreach refused the refresh"
    assert redact_text(prose) == prose
    assert "s3cr3t" not in redact_text("authorization: s3cr3t")
    assert "s3cr3t" not in redact_text('{"access_token": "s3cr3t"}')


# (9) the spec's promises ----------------------------------------------------------------


async def test_the_server_keeps_the_specs_promises(start: Start) -> None:
    base = await start()
    async with aiohttp.ClientSession() as s, s.get(f"{base}/openapi.json") as r:
        spec = await r.json()
    paths = spec["paths"]
    for path in ("/status", "/status/{destination_id}", "/v1/destinations/{destination_id}/status"):
        [hours] = [p for p in paths[path]["get"]["parameters"] if p["name"] == "hours"]
        assert hours["schema"]["maximum"] >= 1, path
    [state] = [p for p in paths["/oauth/callback"]["get"]["parameters"] if p["name"] == "state"]
    assert state["required"] is True
    [conn] = [p for p in paths["/oauth/start"]["get"]["parameters"] if p["name"] == "connection"]
    assert "pattern" in conn["schema"]
    put = paths["/v1/admin/destinations/{destination_id}"]["put"]["requestBody"]
    replacement = put["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "id" not in spec["components"]["schemas"][replacement]["required"]
    user = {**AUTH, "Content-Type": "application/json"}
    url = f"{base}/v1/admin/connections/c1/authorize"
    for bad in ({"user": None}, {"user": ""}):
        status, _, _ = await call("POST", url, body=json.dumps(bad).encode(), headers=user)
        assert status == 422, bad
    status, _, _ = await call("DELETE", f"{base}/v1/admin/connections/c1?force=null", headers=AUTH)
    assert status == 400
    for method, path in (("GET", "/nowhere"), ("DELETE", "/healthz")):
        status, ctype, doc = await call(method, base + path)
        assert status in (404, 405) and ctype == "application/json", path
        assert doc["errors"][0]["status"] == str(status)
