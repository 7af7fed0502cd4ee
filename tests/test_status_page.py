"""The HTML status page in a real headless Chromium (Debian's ``chromium``; installed by
``deploy/ensure-chromium.sh``), after a real run: audiences with mapping IDs and counts, a
failure's reason, connection and quota; escaped, without attribute values, admin-only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from app.api.app import make_app
from app.config.destinations import parse_config
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.support import (
    Sandbox,
    free_port,
    idle,
    make_settings,
    require_tool,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NAME = "Spring <b>campaign</b> & co"
SECRET_VALUE = "Zebedee-Not-On-The-Page"
AUDIENCES = {"aud-vip": 3, "aud-churn": 9}
ADMIN_KEY = "status-page-admin-key"


@pytest.fixture
def chromium_installed() -> None:
    """Skips a browser test without Chromium locally; fails it under CI, which installs it."""
    require_tool("chromium", "chromium-browser", installed_by="deploy/ensure-chromium.sh")


def _config() -> Any:
    return parse_config(
        {
            "connections": [{"id": "c", "user": "test-user", "access_token": "test-token"}],
            "destinations": [
                {
                    "id": "web",
                    "name": NAME,
                    "connection": "c",
                    "audiences": AUDIENCES,
                    "attributes": {"firstName": "firstName"},
                }
            ],
        }
    )


def _profile(pid: int, statuses: dict[str, str], first: str) -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": str(pid)}]},
        "segmentMembership": {"ups": {a: {"status": s} for a, s in statuses.items()}},
        "attributes": {"firstName": {"value": first}},
    }


async def chromium(url: str, *flags: str, timeout_s: float = 60) -> str:
    """Run headless Chromium on ``url``; its stdout (``--dump-dom``: the DOM after scripts)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *flags,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Cells(HTMLParser):
    """Text of every table cell, per tbody id, and the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.body: dict[str, str | None] = {}
        self.ids: dict[str, str] = {}
        self._tbody: str | None = None
        self._cell: list[str] | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "tbody":
            self._tbody = a.get("id") or ""
            self.tables[self._tbody] = []
        elif tag == "tr" and self._tbody is not None:
            self.tables[self._tbody].append([])
        elif tag == "td" and self._tbody is not None:
            self._cell = []
        if a.get("id") and tag == "span":
            self._id = a["id"]
            self.ids[self._id or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._tbody is not None:
            self.tables[self._tbody][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._tbody = None
        elif tag == "span":
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._id is not None:
            self.ids[self._id] += data


def parse(dom: str) -> Cells:
    cells = Cells()
    cells.feed(dom)
    return cells


@pytest.fixture
async def served(
    prefix: str,
    rclient: redis.Redis,
    sandbox_factory: Callable[..., Sandbox],
    worker_factory: Callable[..., Any],
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A real run (one prospect unknown to Outreach: a 404) and the API serving the page."""
    sandbox = sandbox_factory("--prospect-ids", "1", "1000")
    env = settings_env(prefix, sandbox, COALESCE_WINDOW_MS="100", STATUS_PAGE_REFRESH_S="0")
    keys = Keys(prefix)
    publish_sync(rclient, keys, _config())
    worker_factory(env, concurrency=1)
    profiles = [
        _profile(101, {"aud-vip": "realized", "aud-churn": "exited"}, "Ada"),
        _profile(102, {"aud-vip": "existing"}, "Grace"),
        _profile(103, {"aud-vip": "realized", "aud-churn": "realized"}, "Alan"),
        _profile(7777, {"aud-churn": "realized"}, SECRET_VALUE),  # not in Outreach: 404
        {"identityMap": {}, "segmentMembership": {"ups": {"aud-vip": {"status": "realized"}}}},
    ]
    producer = Producer(make_settings(env))
    await asyncio.to_thread(producer.send, "web", profiles)
    producer.close()

    def settled() -> bool:
        return idle(rclient, keys, "web") and rclient.hlen(keys.failures("web")) == 1

    await asyncio.to_thread(wait_until, settled, timeout_s=30, what="the run to settle")
    runner = web.AppRunner(make_app(make_settings(env)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", env
    await runner.cleanup()


@pytest.mark.usefixtures("chromium_installed")
async def test_status_page_in_chromium_shows_audiences_failures_and_quota(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    base, _ = served
    dom = await chromium(f"{base}/status/web", "--dump-dom", "--virtual-time-budget=8000")
    page = parse(dom)
    # The script ran: it fetched data.json and rendered it (it sets these only on success).
    assert page.body.get("data-loaded") == "true", dom[:2000]
    assert page.ids.get("live") == "live"
    audiences = {row[1]: row for row in page.tables["audiences"]}
    assert set(audiences) == {"3", "9"}
    vip, churn = audiences["3"], audiences["9"]
    # Audience, mapping ID, field, received, activated, realized, existing, exited, ...
    assert vip[:8] == ["aud-vip", "3", "custom3", "4", "3", "2", "1", "0"]
    assert churn[:8] == ["aud-churn", "9", "custom9", "3", "2", "1", "0", "1"]
    assert vip[9] == "1"  # excluded (no OutreachId)
    assert churn[10] == "1" and churn[11] == "http_404 1"  # failed, by reason
    [failure] = page.tables["failures"]
    assert failure[1] == "http_404" and failure[2] == "404"
    assert failure[5] == "custom9, firstName" and failure[6] == "9"
    flow = {row[0]: row[1:] for row in page.tables["flow"]}
    assert flow["Profiles received"] == ["5", "5"]
    assert flow["Identities activated (prospects updated)"] == ["3", "3"]
    assert flow["Requests spent"] == ["4", "4"]
    assert 'data-k="connection.user">test-user<' in dom
    # With a failure listed, the "none" line is hidden and the table shown.
    assert re.search(r'<p id="no-failures" hidden="">', dom)
    assert re.search(r'<div id="failure-table">', dom)
    assert 'data-k="connection.state">active<' in dom
    assert re.search(r'data-k="quota.remaining">\d+<', dom)
    # Escaped, never markup; no attribute value anywhere on the page.
    assert "Spring &lt;b&gt;campaign&lt;/b&gt; &amp; co" in dom and "<b>" not in dom
    assert SECRET_VALUE not in dom and "Ada" not in dom
    # A picture for people (and for the record of this test run).
    shot = tmp_path / "status.png"
    await chromium(
        f"{base}/status/web",
        f"--screenshot={shot}",
        "--window-size=1280,1100",
        "--virtual-time-budget=8000",
        "--hide-scrollbars",
    )
    assert shot.stat().st_size > 10_000


@pytest.mark.usefixtures("chromium_installed")
async def test_status_index_in_chromium_lists_destinations(
    served: tuple[str, dict[str, str]],
) -> None:
    base, _ = served
    dom = await chromium(f"{base}/status", "--dump-dom", "--virtual-time-budget=3000")
    page = parse(dom)
    assert page.body.get("data-loaded") == "true"
    [row] = page.tables[""]
    assert row[0] == "web" and row[1] == NAME
    assert re.search(r'href="/status/web"', dom)


async def test_status_page_is_admin_only_and_json_has_no_values(
    prefix: str, rclient: redis.Redis, served: tuple[str, dict[str, str]]
) -> None:
    _, env = served
    protected = make_settings({**env, "ADMIN_API_KEY": ADMIN_KEY})
    runner = web.AppRunner(make_app(protected))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/status", "/status/web", "/status/web/data.json", "/metrics"):
                async with s.get(url + path) as r:
                    assert r.status == 401, path
                    assert ADMIN_KEY not in await r.text()
            bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
            async with s.get(f"{url}/status/web/data.json", headers=bearer) as r:
                assert r.status == 200
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
                text = await r.text()
            async with s.get(f"{url}/status/web?hours=0", headers=bearer) as r:
                assert r.status == 400 and "hours must be a whole number" in await r.text()
            async with s.get(f"{url}/status/nope", headers=bearer) as r:
                assert r.status == 404 and r.content_type == "text/html"
            async with s.get(f"{url}/status/nope/data.json", headers=bearer) as r:
                assert r.status == 404 and r.content_type == "application/json"
                [error] = (await r.json())["errors"]  # JSON:API, like every JSON route
                assert error["status"] == "404" and "'nope'" in error["detail"]
            basic = {"Authorization": "Basic " + b64encode(f"ops:{ADMIN_KEY}".encode()).decode()}
            async with s.get(f"{url}/status/web", headers=basic) as r:
                assert r.status == 200 and r.content_type == "text/html"
    finally:
        await runner.cleanup()
    doc = json.loads(text)
    assert doc["recent_failures"][0]["reason"] == "http_404"
    assert SECRET_VALUE not in text and "Grace" not in text


class DevTools:
    """A headless Chromium driven over the Chrome DevTools protocol (aiohttp's WebSocket):
    what a person's browser lays out and paints, asked of the page itself."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self._id = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        async for msg in self.ws:
            answer = json.loads(msg.data)
            if answer.get("id") == self._id:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer["result"]
                return result
        raise AssertionError(f"DevTools closed during {method}")

    async def evaluate(self, expression: str) -> Any:
        got = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in got, got
        return got["result"].get("value")

    async def open(self, url: str, *, dark: bool) -> None:
        scheme = "dark" if dark else "light"
        features = [{"name": "prefers-color-scheme", "value": scheme}]
        await self.call("Emulation.setEmulatedMedia", features=features)
        await self.call("Emulation.setDeviceMetricsOverride", width=1280, height=1800,
                        deviceScaleFactor=1, mobile=False)  # fmt: skip
        await self.call("Page.navigate", url=url)
        for _ in range(200):
            if await self.evaluate("document.body && document.body.dataset.loaded") == "true":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{url} never finished loading")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def devtools() -> AsyncIterator[DevTools]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            port_file = Path(profile, "DevToolsActivePort")
            await asyncio.to_thread(wait_until, port_file.exists, timeout_s=30, what="DevTools")
            await asyncio.sleep(0.1)  # the file is written before its lines are complete
            port = port_file.read_text().split()[0]
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                async with s.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    yield DevTools(ws)
        finally:
            # The whole group: Chromium's renderer and utility processes outlive a killed
            # browser process and keep writing to the profile while it is being removed.
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            await asyncio.to_thread(wait_until, lambda: _group_gone(proc.pid), timeout_s=10,
                                    what="Chromium's processes to end")  # fmt: skip


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


#: Per chart: its bars' hour, value and painted height, the limit line, the svg's labels.
CHARTS_JS = """JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => {
  const svg = f.querySelector('svg');
  const label = id => (document.getElementById(id) || {}).textContent || '';
  const [t, d] = (svg.getAttribute('aria-labelledby') || '').split(' ');

  return {
    key: f.dataset.chart, role: svg.getAttribute('role'), title: label(t), desc: label(d),
    width: svg.getBoundingClientRect().width,
    fill: getComputedStyle(svg.querySelector('rect.bar')).fill,
    limit: svg.dataset.limit ? Number(svg.dataset.limit) : null,
    bars: [...svg.querySelectorAll('rect.bar')].map(b => ({
      hour: b.dataset.hour, value: b.dataset.value, height: b.getBBox().height,
      tip: b.querySelector('title').textContent})),
  };
}))"""


@pytest.mark.usefixtures("chromium_installed")
async def test_charts_render_in_chromium_light_and_dark_with_the_json_status_numbers(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as s, s.get(f"{base}/status/web/data.json?hours=24") as r:
        doc = await r.json()
    hourly = doc["metrics"]["hourly"]
    painted: dict[bool, list[dict[str, Any]]] = {}
    backgrounds: dict[bool, str] = {}
    async with devtools() as browser:
        for dark in (False, True):
            await browser.open(f"{base}/status/web?hours=24", dark=dark)
            painted[dark] = json.loads(await browser.evaluate(CHARTS_JS))
            backgrounds[dark] = await browser.evaluate("getComputedStyle(document.body).background")
            await browser.screenshot(tmp_path / f"charts-{'dark' if dark else 'light'}.png")
        await browser.open(f"{base}/status/web?hours=168", dark=False)
        week = json.loads(await browser.evaluate(CHARTS_JS))
    charts = {c["key"]: c for c in painted[False]}
    assert set(charts) == {
        "profiles_received", "prospects_activated", "profiles_excluded", "failed",
        "rate_limited", "requests", "pending", "lag_s",
    }  # fmt: skip
    for key, chart in charts.items():
        # The numbers are the JSON status's, hour by hour.
        assert [b["hour"] for b in chart["bars"]] == [h["hour"] for h in hourly], key
        want = ["" if h[key] is None else str(h[key]) for h in hourly]
        assert [b["value"] for b in chart["bars"]] == want, key
        # Painted: laid out at a readable size, a bar's height in proportion to its value.
        assert chart["width"] > 300, key
        per_unit = {round(b["height"] / int(b["value"]), 3) for b in chart["bars"] if b["value"]
                    and int(b["value"])}  # fmt: skip
        assert len(per_unit) <= 1, (key, per_unit)
        assert all(b["height"] == 0 for b in chart["bars"] if b["value"] in ("", "0")), key
        # Accessible: an image with a title and a description read aloud, a tip per bar.
        assert chart["role"] == "img" and chart["title"] and "Per hour from" in chart["desc"]
        assert all(b["tip"] for b in chart["bars"])
    now = charts["profiles_received"]["bars"][-1]
    assert now["value"] == "5" and now["height"] > 10
    assert charts["failed"]["bars"][-1]["value"] == "1"
    assert charts["pending"]["bars"][-1]["value"] == "0"  # sampled when the status was read
    quota = doc["quota"]
    assert charts["requests"]["limit"] == quota["governing_limit"] * 3600 // quota["window_s"]
    assert "highest 5 profiles" in charts["profiles_received"]["desc"]
    # Readable in both schemes: the page and the bars change colour with prefers-color-scheme.
    assert painted[True][0]["fill"] != painted[False][0]["fill"]
    assert backgrounds[True] != backgrounds[False]
    # Seven days: one bar per hour.
    assert {len(c["bars"]) for c in week} == {168}
