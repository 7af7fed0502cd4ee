"""Lua scripts shipped as package files: each file read once, each script registered once per
client.

``register_script`` hashes the text; calling what it returns runs ``EVALSHA`` and loads the
script into Redis only when the server does not have it (a restart, a failover).

A script may be a file run after a *prelude*: files of shared functions (Redis runs one text
per script, so what several scripts share is prepended rather than called).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
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
        self._sync: WeakKeyDictionary[redis.Redis, dict[tuple[str, ...], Script]] = (
            WeakKeyDictionary()
        )
        self._async: WeakKeyDictionary[aioredis.Redis, dict[tuple[str, ...], AsyncScript]] = (
            WeakKeyDictionary()
        )

    def source(self, name: str, *, prelude: Sequence[str] = ()) -> str:
        """The text of script ``name``, after the files of ``prelude`` in order."""
        return "".join(lua_source(self.package, part) for part in (*prelude, name))

    def sync(self, client: redis.Redis, name: str, *, prelude: Sequence[str] = ()) -> Script:
        """Script ``name`` (after ``prelude``) for a synchronous client."""
        script: Script = self._registered(self._sync, client, (*prelude, name))
        return script

    def aio(self, client: aioredis.Redis, name: str, *, prelude: Sequence[str] = ()) -> AsyncScript:
        """Script ``name`` (after ``prelude``) for an asyncio client."""
        script: AsyncScript = self._registered(self._async, client, (*prelude, name))
        return script

    def _registered(
        self,
        known: WeakKeyDictionary[Any, dict[tuple[str, ...], Any]],
        client: Any,
        parts: tuple[str, ...],
    ) -> Any:
        with self._lock:
            scripts = known.setdefault(client, {})
            if parts not in scripts:
                scripts[parts] = client.register_script(self.source(parts[-1], prelude=parts[:-1]))
            return scripts[parts]


@cache
def package_scripts(package: str) -> LuaScripts:
    """The one ``LuaScripts`` of ``package``, shared by all its modules."""
    return LuaScripts(package)
