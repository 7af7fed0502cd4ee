"""What test modules share: the Redis, settings and sandbox wiring, builders (a destination
config, a profile), waits and probes, a Redis of a test's own, the OAuth API process, AEP's
sample profiles. A test module imports these, the fixtures of ``conftest.py`` (by name) and
the service; never another test module (an import-linter contract keeps it so)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from cryptography.fernet import Fernet
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from app.config.destinations import Config, parse_config
from app.connections.crypto import TokenCipher, parse_keys
from app.core.keys import Keys
from app.core.settings import Settings
from app.testing.harness import ROOT, Sandbox, free_port, http_json, wait_until

__all__ = [
    "ROOT",
    "Sandbox",
    "free_port",
    "http_json",
    "wait_until",
]


# Wiring: Redis, settings, a Redis of a test's own.

#: The suite's own database on the shared Redis; keys carry a per-test prefix as well.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
#: The same database as a ``limits`` storage URI (as ``limits_storage_uri`` derives it).
TEST_STORAGE_URI = "async+" + TEST_REDIS_URL


def require_tool(*names: str, installed_by: str) -> str:
    """The path of the first of ``names`` on PATH. Missing, a test skips here with the reason,
    but fails under CI (``CI=true``), where ``make test`` installs it (``installed_by``): there a
    test must not pass by not running."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    why = f"{' or '.join(names)} not installed ({installed_by} installs it)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true and {why}: this test would be skipped, proving nothing")
    pytest.skip(why)


def settings_env(prefix: str, sandbox: Sandbox | None, **extra: str) -> dict[str, str]:
    env = {
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": f"{prefix}-q",
        "COALESCE_WINDOW_MS": "300",
        "LOG_LEVEL": "WARNING",
    }
    if sandbox is not None:
        env["OUTREACH_API_URL"] = sandbox.api_url
        env["OUTREACH_TOKEN_URL"] = f"{sandbox.url}/oauth/token"
        env["OUTREACH_AUTHORIZE_URL"] = f"{sandbox.url}/oauth/authorize"
    env.update(extra)
    return env


def make_settings(env: dict[str, str]) -> Settings:
    return Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]


# A Redis of a test's own, to stop and start: a crash, a restart, a failover.
REDIS_CONF = ROOT / "deploy" / "redis.conf"


class LocalRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", str(REDIS_CONF), "--port", str(self.port), "--bind", "127.0.0.1"]
        # "always": the test kills Redis right after writing; production uses everysec.
        cmd += ["--dir", str(self.dir), "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), timeout_s=10, what="redis-server to start")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # a crash, not a clean shutdown
        self.proc.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# Builders and waits.

AUDIENCES = {f"aud-{n}": n for n in (1, 2, 3, 4, 7, 12)}


def e2e_config(dest: str = "e2e", *, rate_limit: str = "10000/hour", **extra: Any) -> Config:
    conn = {
        "id": "conn",
        "user": "test-user",
        "access_token": "test-token",
        "rate_limit": rate_limit,
    }
    return parse_config(
        {
            "connections": [conn],
            "destinations": [
                {
                    "id": dest,
                    "name": "End to end",
                    "connection": "conn",
                    "audiences": AUDIENCES,
                    "attributes": {
                        "firstName": "firstName",
                        "lastName": "lastName",
                        "title": "title",
                    },
                    **extra,
                }
            ],
        }
    )


def idle(rclient: redis.Redis, keys: Keys, dest: str) -> bool:
    return rclient.zcard(keys.due(dest)) + rclient.zcard(keys.leases(dest)) == 0


def counts(rclient: redis.Redis, keys: Keys, dest: str) -> dict[str, int]:
    """A destination's dataflow counters, as numbers."""
    return {k.decode(): int(v) for k, v in rclient.hgetall(keys.counters(dest)).items()}


def differing(state: dict[int, dict[str, Any]], expected: dict[int, dict[str, Any]]) -> list[int]:
    return [p for p, fields in expected.items() if state.get(p) != fields]


def profile(
    pid: object, status: str = "realized", audience: str = "aud-1", **attrs: Any
) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": pid}]},
        "segmentMembership": {
            "ups": {audience: {"status": status, "lastQualificationTime": "2026-11-20T13:15:49Z"}}
        },
        "attributes": {k: {"value": v} for k, v in attrs.items()},
    }


def wait_for_holds(
    rclient: redis.Redis, keys: Keys, dest: str, *, looks: int, span_s: float
) -> None:
    """Wait until the drain has found ``dest`` unable to send and held it ``looks`` times
    (each look sets a new hold, ``REAUTH_HOLD_S`` from then), the first and the last at least
    ``span_s`` apart: it kept looking at the destination all that time."""
    seen: list[int] = []

    def looked() -> bool:
        raw = rclient.get(keys.hold(dest))
        if raw is not None and (not seen or int(raw) != seen[-1]):
            seen.append(int(raw))
        return len(seen) >= looks and seen[-1] - seen[0] >= span_s * 1000

    wait_until(looked, timeout_s=30, what=f"{looks} holds of {dest} over {span_s} s", every_s=0.02)


async def raw_status(url: str, method: str, header: bytes, body: bytes = b"") -> int:
    """The status of a request whose header line is sent as raw bytes (no client re-encodes
    or refuses it): how a non-UTF-8 credential reaches the server."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"{method} {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        writer.write(head + header + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


# AEP's documented profile shapes (tests/fixtures/aep).

SAMPLES = json.loads((ROOT / "tests/fixtures/aep/sample-profiles.json").read_text())
ALIASES: dict[str, Any] = SAMPLES["namespaceSegmentAliases"]
PROFILES: list[dict[str, Any]] = SAMPLES["profiles"]


# The API as a process, for the OAuth dance: its pages are read as a browser would.

ADMIN = "admin-key-for-tests"
CLIENT = {"OUTREACH_CLIENT_ID": "sandbox-client", "OUTREACH_CLIENT_SECRET": "sandbox-secret"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)


@dataclass
class Answer:
    status: int
    headers: Message
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    url: str,
    *,
    method: str = "GET",
    admin: bool = False,
    body: Any = None,
    extra: dict[str, str] | None = None,
) -> Answer:
    headers = {"Authorization": f"Bearer {ADMIN}"} if admin else {}
    headers |= extra or {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with NO_REDIRECTS.open(req, timeout=30) as resp:
            return Answer(resp.status, resp.headers, resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, exc.read().decode())


@dataclass
class Api:
    url: str
    env: dict[str, str]
    cipher: TokenCipher
    proc: subprocess.Popen[bytes]

    def dance(self, conn: str, *, user: str | None = None) -> Answer:
        """Start, follow Outreach's redirect back, and answer the callback's page."""
        query = {"connection": conn, **({"user": user} if user else {})}
        started = call(f"{self.url}/oauth/start?{urllib.parse.urlencode(query)}", admin=True)
        assert started.status == 302, started.body
        authorized = call(started.location)
        assert authorized.status == 302, authorized.body
        assert authorized.location.startswith(f"{self.url}/oauth/callback?")
        return call(authorized.location)


def start_api(prefix: str, sandbox: Sandbox, **extra: str) -> Api:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = Fernet.generate_key().decode()
    env = settings_env(
        prefix,
        sandbox,
        ADMIN_API_KEY=ADMIN,
        TOKEN_ENCRYPTION_KEY=key,
        OUTREACH_REDIRECT_URI=f"{url}/oauth/callback",
        REAUTH_HOLD_S="1",
        **CLIENT,
        **extra,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "api", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
    )

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited with {proc.returncode}")
        try:
            return call(f"{url}/healthz").status == 200
        except OSError:
            return False

    wait_until(answers, timeout_s=30, what="the API to listen")
    return Api(url, env, TokenCipher(parse_keys(key)), proc)


class CapturingTransport(Transport):
    """Sentry's transport keeping every envelope in memory: nothing goes over the network."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def text(self) -> str:
        return "\n".join(e.serialize().decode("utf-8", "replace") for e in self.envelopes)


# The sandbox in this process, over real HTTP, with a clock the test moves.

SANDBOX_TOKEN = "tok-alice"
JSONAPI = "application/vnd.api+json"


class ManualClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    """An HTTP answer: status, headers, and the body as JSON (or text, or None when empty)."""

    status: int
    headers: dict[str, str]
    body: Any

    @property
    def error(self) -> dict[str, Any]:
        """The only JSON:API error of the answer."""
        errors = self.body["errors"]
        assert len(errors) == 1, errors
        first: dict[str, Any] = errors[0]
        return first


@dataclass
class LiveSandbox:
    """An in-process sandbox's URL, a session to call it and its clock."""

    url: str
    session: Any  # aiohttp.ClientSession; support stays importable without aiohttp types
    clock: ManualClock

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        token: str | None = SANDBOX_TOKEN,
        params: Any = None,
    ) -> Reply:
        """One API call with a bearer token and a JSON:API body."""
        headers = {"Content-Type": JSONAPI}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body)
        url = path if path.startswith("http") else self.url + path
        async with self.session.request(
            method, url, data=data, headers=headers, params=params
        ) as resp:
            text = await resp.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return Reply(resp.status, dict(resp.headers), parsed)

    async def control(self, path: str, body: Any = None) -> Any:
        """A control call (`/_sandbox/<path>`): GET without a body, POST with one."""
        method = "GET" if body is None else "POST"
        # A stream, not bytes: a seed of many prospects is a large body.
        data = None if body is None else io.BytesIO(json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        url = f"{self.url}/_sandbox/{path}"
        async with self.session.request(method, url, data=data, headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.json()
