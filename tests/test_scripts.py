"""One Lua loader: every script is a package file, shipped as package data and registered once
per client by `app.core.scripts` (no inline Lua, no second loader)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from app.core.scripts import LuaScripts
from app.ratelimit.gate import QuotaGate
from tests.support import TEST_REDIS_URL, TEST_STORAGE_URI

ROOT = Path(__file__).resolve().parents[1]


def test_no_lua_is_written_inline_in_python() -> None:
    inline = [
        str(path.relative_to(ROOT))
        for top in ("app", "workers")
        for path in (ROOT / top).rglob("*.py")
        if re.search(r"redis\.call\(|\.eval\(", path.read_text(encoding="utf-8"))
    ]
    assert inline == []


def test_every_lua_file_is_shipped_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = config["tool"]["setuptools"]["package-data"]
    packages = {
        ".".join(path.parent.parent.relative_to(ROOT).parts)
        for path in (ROOT / "app").rglob("lua/*.lua")
    }
    assert packages and all("lua/*.lua" in shipped.get(p, []) for p in packages), packages


def test_a_script_runs_after_its_prelude_and_is_registered_once_per_client() -> None:
    scripts, one, two = LuaScripts("app.ratelimit"), redis.Redis(), redis.Redis()
    first = scripts.sync(one, "quota_reserve", prelude=["quota_grants"])
    assert scripts.sync(one, "quota_reserve", prelude=("quota_grants",)) is first
    assert scripts.sync(two, "quota_reserve", prelude=("quota_grants",)) is not first
    grants, reserve = scripts.source("quota_grants"), scripts.source("quota_reserve")
    assert first.script == grants + reserve
    assert scripts.sync(one, "quota_reserve").script == reserve


async def test_a_new_gate_on_the_same_client_registers_nothing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    registered: list[str] = []
    register = client.register_script

    def counting(text: str) -> AsyncScript:
        registered.append(text)
        return register(text)

    monkeypatch.setattr(client, "register_script", counting)
    try:
        QuotaGate(client, storage_uri=TEST_STORAGE_URI, prefix="t")
        assert len(registered) == 5
        QuotaGate(client, storage_uri=TEST_STORAGE_URI, prefix="t")
        assert len(registered) == 5
    finally:
        await client.aclose()
