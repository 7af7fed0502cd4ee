"""One event loop, one aiohttp session and one Redis pool per worker process.

Created on first use in the process that runs tasks (after the prefork fork), closed at
process shutdown; tasks hand coroutines to the loop and never call ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp

from app.connections.crypto import cipher_for
from app.connections.oauth import TokenManager
from app.connections.records import ConnectionStore
from app.core.redis_client import async_client
from app.core.settings import Settings, get_settings
from app.delivery.drain import Deliverer
from app.outreach.client import OutreachClient
from app.ratelimit.gate import gate_for
from app.store.prospects import ProspectStore
from app.store.registry import Registry

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="outreach-io", daemon=True
        )
        self._thread.start()
        self.deliverer: Deliverer = self.run(self._build())

    async def _build(self) -> Deliverer:
        s = self.settings
        self.redis = async_client(s)
        limit = aiohttp.TCPConnector(limit=s.http_concurrency * 2)
        self.session = aiohttp.ClientSession(connector=limit)
        store = ProspectStore(self.redis, s.keys)
        gate = gate_for(self.redis, s)
        client = OutreachClient(
            self.session, api_url=s.outreach_api_url, timeout_s=s.outreach_timeout_s
        )
        registry = Registry(self.redis, s.keys)  # metadata only: tokens come from TokenManager
        tokens = TokenManager.from_settings(
            ConnectionStore(self.redis, s.keys, cipher_for(s)), self.session, s
        )
        return Deliverer(
            store=store, registry=registry, client=client, gate=gate, settings=s, refresher=tokens
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _close(self) -> None:
        await self.session.close()
        await self.redis.aclose()

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def close_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
