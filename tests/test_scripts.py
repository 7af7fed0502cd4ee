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


def test_every_key_a_script_touches_is_declared_in_keys() -> None:
    """Redis Cluster routes a script by its declared keys: a key name a script builds itself
    (from ARGV, or by joining strings) may live on another node. A key is ``KEYS[...]``, or a
    name bound to one, never built."""
    key_arg = re.compile(r"redis\.call\('(\w+)',\s*([^,)]+)")
    built = re.compile(r"\.\.|ARGV")
    found = []
    for path in sorted((ROOT / "app").glob("*/lua/*.lua")):
        text = path.read_text(encoding="utf-8")
        bindings = dict(_bindings(text))
        for command, key in key_arg.findall(text):
            key = key.strip()
            if command == "TIME" or re.fullmatch(r"KEYS\[[^\]]+\]", key):
                continue
            if key not in bindings and not re.fullmatch(r"\w+", key):
                found.append(f"{path.name}: {command} {key}")
            elif built.search(bindings.get(key, "")):
                found.append(f"{path.name}: {command} {key} = {bindings[key]}")
    assert found == []


def _bindings(text: str) -> list[tuple[str, str]]:
    """``local a, b = x, y`` -> (a, "x, y"), (b, "x, y"): enough to see how a name is built."""
    out = []
    for names, value in re.findall(r"local ([\w, ]+?) = (.+)", text):
        out += [(name.strip(), value) for name in names.split(",")]
    return out
