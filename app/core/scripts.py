"""Lua scripts shipped as package files: each file read once, each script registered once per
client.

``register_script`` hashes the text; calling what it returns runs ``EVALSHA`` and loads the
script into Redis only when the server does not have it (a restart, a failover).
"""

from __future__ import annotations

import threading
from functools import cache
from importlib import resources
from typing import Any
from weakref import WeakKeyDictionary

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script


@cache
def lua_source(package: str, name: str) -> str:
    """The text of ``<package>/lua/<name>.lua``."""
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class LuaScripts:
    """The scripts of one package (``app.store`` -> ``app/store/lua/*.lua``)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self._lock = threading.Lock()
        self._sync: WeakKeyDictionary[redis.Redis, dict[str, Script]] = WeakKeyDictionary()
        self._async: WeakKeyDictionary[aioredis.Redis, dict[str, AsyncScript]] = WeakKeyDictionary()

    def source(self, name: str) -> str:
        return lua_source(self.package, name)

    def sync(self, client: redis.Redis, name: str) -> Script:
        """Script ``name`` for a synchronous client."""
        script: Script = self._registered(self._sync, client, name)
        return script

    def aio(self, client: aioredis.Redis, name: str) -> AsyncScript:
        """Script ``name`` for an asyncio client."""
        script: AsyncScript = self._registered(self._async, client, name)
        return script

    def _registered(
        self, known: WeakKeyDictionary[Any, dict[str, Any]], client: Any, name: str
    ) -> Any:
        with self._lock:
            scripts = known.setdefault(client, {})
            if name not in scripts:
                scripts[name] = client.register_script(self.source(name))
            return scripts[name]


@cache
def package_scripts(package: str) -> LuaScripts:
    """The one ``LuaScripts`` of ``package``, shared by all its modules."""
    return LuaScripts(package)
