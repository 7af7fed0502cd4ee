"""The one way to reach Redis: sync and async clients, the ``limits`` storage URI and Celery's
broker, from the settings — one Redis at ``REDIS_URL``, the master a set of Sentinels names, or
a Redis Cluster (``REDIS_CLUSTER=true``: ``REDIS_URL`` names any one of its nodes).

With ``REDIS_SENTINELS=host:port,host:port`` (and ``REDIS_SENTINEL_MASTER``), the clients ask
the Sentinels for the current master and follow a failover; ``REDIS_URL`` still supplies the
database number, user, password and TLS (``rediss://``) of the master.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote, urlsplit

import redis
import redis.asyncio as aioredis
from limits.aio.storage import Storage
from limits.storage import storage_from_string
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.sentinel import Sentinel

from app.core.settings import Settings

#: Redelivery of an unacknowledged task after this long is harmless (drains are idempotent).
VISIBILITY_TIMEOUT_S = 3600


class _SentinelRedis(redis.Redis):
    """The master's client; closing it closes its connections to the Sentinels too."""

    def close(self) -> None:
        super().close()
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            sentinel.close()


class _AsyncSentinelRedis(aioredis.Redis):
    """The asyncio twin of :class:`_SentinelRedis`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


def sentinel_hosts(settings: Settings) -> list[tuple[str, int]]:
    """The Sentinels' addresses (empty: no Sentinel, one Redis at ``REDIS_URL``)."""
    if not settings.redis_sentinels:
        return []
    hosts = (h.rsplit(":", 1) for h in settings.redis_sentinels.split(","))
    return [(host, int(port)) for host, port in hosts]


def _master_options(settings: Settings) -> dict[str, Any]:
    """Database, credentials and TLS of the master, from ``REDIS_URL``."""
    url = str(settings.redis_url)
    parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    opts = {k: v for k, v in parsed.items() if k in ("db", "username", "password") and v}
    if url.startswith("rediss://"):
        opts["ssl"] = True
    return opts


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    pw = settings.redis_sentinel_password
    return {"password": pw.get_secret_value()} if pw is not None else {}


def sync_client(settings: Settings) -> redis.Redis:
    """A client of the deployment's Redis (the current master under Sentinel; under
    ``REDIS_CLUSTER`` a cluster client, which routes each command to its key's node)."""
    hosts = sentinel_hosts(settings)
    if settings.redis_cluster:
        # Typed as the single-node client: every command the service sends is one key's, or
        # one slot's (docs/operations.md, "Redis Cluster"), which RedisCluster routes alike.
        return cast(redis.Redis, RedisCluster.from_url(str(settings.redis_url)))
    if not hosts:
        return redis.Redis.from_url(str(settings.redis_url))
    sentinel = Sentinel(hosts, sentinel_kwargs=_sentinel_kwargs(settings))  # type: ignore[no-untyped-call]
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, redis_class=_SentinelRedis, **_master_options(settings)
    )
    return cast(redis.Redis, master)


def async_client(settings: Settings) -> aioredis.Redis:
    """The asyncio twin of :func:`sync_client`."""
    hosts = sentinel_hosts(settings)
    if settings.redis_cluster:
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(str(settings.redis_url)))
    if not hosts:
        return aioredis.from_url(str(settings.redis_url))
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs=_sentinel_kwargs(settings)
    )
    return cast(
        aioredis.Redis,
        sentinel.master_for(
            settings.redis_sentinel_master,
            redis_class=_AsyncSentinelRedis,
            **_master_options(settings),
        ),
    )


def limits_storage_uri(settings: Settings) -> str:
    """The ``limits`` storage URI (async) of the deployment's Redis."""
    hosts = sentinel_hosts(settings)
    if settings.redis_cluster:
        url = urlsplit(str(settings.redis_url))
        return f"async+redis+cluster://{url.hostname}:{url.port or 6379}"
    if not hosts:
        return "async+" + str(settings.redis_url)
    where = ",".join(f"{h}:{p}" for h, p in hosts)
    return f"async+redis+sentinel://{where}/{settings.redis_sentinel_master}"


def limits_storage(client: aioredis.Redis, *, key_prefix: str) -> Storage:
    """A ``limits`` storage on ``client``'s own connection pool: one set of connections, surely
    the same database (under Sentinel, the master ``client`` follows), closed with ``client``
    (limits' storage has no close of its own). limits prepends ``"<key_prefix>:"`` itself."""
    options: dict[str, Any] = {
        "implementation": "redispy",
        "key_prefix": key_prefix,
        "wrap_exceptions": True,
    }
    if isinstance(client, AsyncRedisCluster):
        return _cluster_storage(client, options)
    # With the pool given, the URI only picks limits' asyncio Redis storage.
    options["connection_pool"] = client.connection_pool
    return cast(Storage, storage_from_string("async+redis://", **options))


def _cluster_storage(client: AsyncRedisCluster, options: dict[str, Any]) -> Storage:
    """limits' cluster storage on ``client`` itself. limits takes no cluster client (only a
    single node's pool), so the client it would build (lazily: it never connects) is swapped
    for ours before any use: one set of connections, closed with ``client``."""
    # The address only feeds the client that is swapped out.
    storage = cast(Any, storage_from_string("async+redis+cluster://localhost:6379", **options))
    storage.bridge.storage = client
    storage.bridge.connection_getter = lambda _readonly: client
    storage.bridge.register_scripts()
    return cast(Storage, storage)


def broker_url(settings: Settings) -> str:
    """Celery's broker: ``BROKER_URL``, else the deployment's Redis (kombu's ``sentinel://``
    transport under Sentinel)."""
    hosts = sentinel_hosts(settings)
    # Under REDIS_CLUSTER the settings insist on a BROKER_URL of its own (kombu has no
    # cluster transport).
    if settings.broker_url or not hosts:
        return settings.celery_broker_url
    opts = _master_options(settings)
    auth = ""
    if "password" in opts:
        user = quote(opts.get("username", ""), safe="")
        auth = f"{user}:{quote(opts['password'], safe='')}@"
    db = opts.get("db", 0)
    return ";".join(f"sentinel://{auth}{h}:{p}/{db}" for h, p in hosts)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Celery's ``broker_transport_options`` to go with :func:`broker_url`."""
    options: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if broker_url(settings).startswith("sentinel://"):
        options["master_name"] = settings.redis_sentinel_master
        if kwargs := _sentinel_kwargs(settings):
            options["sentinel_kwargs"] = kwargs
    return options
