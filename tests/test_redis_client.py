"""One way to reach Redis: the plain URL as before, and a real Sentinel (redis-server in
sentinel mode) naming the master for the sync and async clients, the quota gate's ``limits``
storage and Celery's broker (kombu's ``sentinel://`` transport)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from app.core.redis_client import (
    async_client,
    broker_transport_options,
    broker_url,
    limits_storage_uri,
    sync_client,
)
from app.core.settings import Settings
from app.ratelimit.gate import gate_for
from tests.support import TEST_REDIS_URL, free_port, make_settings, settings_env, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed"
)


def _start(cmd: list[str], port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    client = redis.Redis(port=port)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(pings, timeout_s=10, what=f"redis on port {port}")
    client.close()


@pytest.fixture
def sentinel_settings(prefix: str, tmp_path: Path) -> Iterator[Settings]:
    """A master and a Sentinel watching it (as "outreach"); REDIS_URL's host is unused."""
    master, sentinel = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor outreach 127.0.0.1 {master} 1\n"
    )
    try:
        _start(["redis-server", "--port", str(master), "--bind", "127.0.0.1", "--save", ""],
               master, procs)  # fmt: skip
        _start(["redis-server", str(conf), "--sentinel"], sentinel, procs)
        env = settings_env(
            prefix,
            None,
            REDIS_URL="redis://nowhere.invalid:1/3",
            REDIS_SENTINELS=f"127.0.0.1:{sentinel}",
            REDIS_SENTINEL_MASTER="outreach",
        )
        yield make_settings(env)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_plain_url_is_unchanged(prefix: str) -> None:
    s = make_settings(settings_env(prefix, None))
    assert limits_storage_uri(s) == f"async+{TEST_REDIS_URL}"
    assert broker_url(s) == TEST_REDIS_URL
    options = broker_transport_options(s)
    assert options["visibility_timeout"] == 3600 and "master_name" not in options
    client = sync_client(s)
    assert client.ping() and client.connection_pool.connection_kwargs["db"] == 13
    client.close()


def test_every_client_has_deadlines(prefix: str) -> None:
    env = settings_env(prefix, None, REDIS_SOCKET_TIMEOUT_S="4", REDIS_CONNECT_TIMEOUT_S="2")
    s = make_settings(env)
    deadlines = {"socket_timeout": 4.0, "socket_connect_timeout": 2.0, "socket_keepalive": True}
    client, blocking = sync_client(s), sync_client(s, block_s=1.0)
    try:
        for kwargs in (
            client.connection_pool.connection_kwargs,
            async_client(s).connection_pool.connection_kwargs,
            broker_transport_options(s),
        ):
            assert deadlines.items() <= kwargs.items()
            assert kwargs["health_check_interval"] > 0
        # A blocking command's wait comes on top of the command's deadline.
        assert blocking.connection_pool.connection_kwargs["socket_timeout"] == 5.0
    finally:
        client.close()
        blocking.close()


def test_bad_sentinel_list_is_refused_naming_the_variable(prefix: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="redis_sentinels"):
        make_settings(settings_env(prefix, None, REDIS_SENTINELS="host-without-port"))


async def test_clients_gate_and_broker_find_the_master_through_sentinel(
    sentinel_settings: Settings,
) -> None:
    s = sentinel_settings
    sync = sync_client(s)
    sync.set("k", "sync")
    assert sync.connection_pool.connection_kwargs["db"] == 3  # REDIS_URL's database
    assert sync.connection_pool.connection_kwargs["socket_timeout"] == s.redis_socket_timeout_s
    aclient = async_client(s)
    try:
        assert await aclient.get("k") == b"sync"
        gate = gate_for(aclient, s)
        grant = await gate.acquire("u1", 3, limit="10/minute")
        assert grant.granted == 1  # the cold-start probe, granted through the master
        assert sync.keys(f"{s.redis_key_prefix}:quota:*")  # the window lives on the master
    finally:
        await aclient.aclose()
        sync.close()
    url = broker_url(s)
    assert url.startswith("sentinel://") and url.endswith("/3")
    with warnings.catch_warnings():
        # kombu's sentinel transport keeps no handle on its connections to the Sentinel
        # itself, so nothing can close them: collect them here, where they are known.
        warnings.simplefilter("ignore", ResourceWarning)
        with Connection(url, transport_options=broker_transport_options(s)) as conn:
            queue = conn.SimpleQueue("ops-test")
            queue.put({"hello": "sentinel"})
            assert queue.get(timeout=5).payload == {"hello": "sentinel"}
            queue.close()
        del conn, queue
        gc.collect()
