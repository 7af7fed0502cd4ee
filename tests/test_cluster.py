"""The service on a real Redis Cluster (``REDIS_CLUSTER=true``): three primaries started once
per test process (``redis_cluster``), destinations whose hash tags land on different nodes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import aiohttp
import pytest
import redis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, TryAgainError

from app.admin.producer_keys import ProducerKeys
from app.api.app import make_app
from app.cli.sample import generate
from app.config.destinations import Destination
from app.core.errors import StoreUnavailable, UnknownDestination
from app.core.keys import Keys
from app.core.operations import run_sync
from app.core.redis_client import async_client, limits_storage_uri
from app.core.settings import SettingsError, load_settings
from app.core.wake import wake
from app.ingest.producer import Producer, transient_cause
from app.ratelimit.gate import QuotaGate
from app.store.prospects import merge_sync
from app.store.registry import (
    DestinationBusy,
    publish_sync,
    stored_destination,
    swap_destination,
)
from app.testing.cluster import LocalCluster
from tests.support import (
    AUDIENCES,
    TEST_REDIS_URL,
    Sandbox,
    counts,
    differing,
    e2e_config,
    free_port,
    idle,
    make_settings,
    profile,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.integration


def cluster_env(prefix: str, cluster: LocalCluster, sandbox: Sandbox | None) -> dict[str, str]:
    """Settings of a deployment on ``cluster``; Celery's broker is the suite's single Redis."""
    return settings_env(
        prefix, sandbox, REDIS_URL=cluster.url, REDIS_CLUSTER="true", BROKER_URL=TEST_REDIS_URL
    )


def names_on_nodes(cluster: LocalCluster, n: int, *, avoid: str = "") -> list[str]:
    """``n`` destination ids whose keys live on ``n`` different primaries (and not on the
    primary of key ``avoid``'s slot)."""
    taken = {cluster.node_of(avoid)} if avoid else set()
    names: list[str] = []
    for i in range(1000):
        node = cluster.node_of(f"dest-{i}")
        if node not in taken:
            taken.add(node)
            names.append(f"dest-{i}")
        if len(names) == n:
            return names
    raise AssertionError(f"no {n} names on different nodes")


def test_ingest_to_sandbox_through_a_real_worker_with_destinations_on_two_nodes(
    prefix: str,
    redis_cluster: LocalCluster,
    cluster_client: RedisCluster,
    sandbox: Sandbox,
    worker_factory: Callable[..., Any],
) -> None:
    keys = Keys(prefix)
    first, second = names_on_nodes(redis_cluster, 2)
    client: Any = cluster_client
    for dest in (first, second):
        publish_sync(client, keys, e2e_config(dest))
    env = cluster_env(prefix, redis_cluster, sandbox)
    worker_factory(env, name="c")

    one = generate(events=300, prospects=40, audiences=AUDIENCES, seed=3)
    two = generate(events=300, prospects=40, audiences=AUDIENCES, seed=4, first_prospect=5001)
    producer = Producer(make_settings(env))
    assert producer.send(first, one.profiles).report.rejected == 0
    assert producer.send(second, two.profiles).report.rejected == 0
    producer.close()
    expected = {**one.expected(), **two.expected()}

    def delivered() -> bool:
        quiet = idle(client, keys, first) and idle(client, keys, second)
        return quiet and not differing(sandbox.prospects(), expected)

    wait_until(delivered, timeout_s=60, what="both destinations to land", every_s=0.3)
    # Coalesced as on one Redis: one PATCH per prospect with something to send.
    assert sandbox.stats()["patches_ok"] == len(expected)
    assert counts(client, keys, first)["drain_delivered"] == len(one.expected())
    assert counts(client, keys, second)["drain_delivered"] == len(two.expected())


async def test_the_quota_gate_never_exceeds_the_limit_on_the_cluster(
    prefix: str, redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    settings = make_settings(cluster_env(prefix, redis_cluster, None))
    clients = [async_client(settings) for _ in range(3)]
    assert all(isinstance(c, AsyncRedisCluster) for c in clients)
    gates = [
        QuotaGate(c, storage_uri=limits_storage_uri(settings), prefix=prefix, probe_first=False)
        for c in clients
    ]
    limit = "30 per 5 seconds"

    async def take(gate: QuotaGate) -> int:
        return sum([(await gate.acquire("u-1", 4, limit=limit)).granted for _ in range(6)])

    # Three processes' worth of gates race for one budget: exactly the limit is granted.
    assert sum(await asyncio.gather(*(take(g) for g in gates))) == 30
    assert (await gates[0].state("u-1", limit=limit)).used == 30
    window = [k for k in cluster_client.scan_iter(match=f"{prefix}:quota:*window*")]
    assert window, "the moving window lives in the cluster"
    for gate, client in zip(gates, clients, strict=True):
        await gate.aclose()
        await client.aclose()


async def test_config_load_edits_and_deletion_on_the_cluster(
    prefix: str, redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    keys = Keys(prefix)
    # The destination's slot on another node than the catalog's: a script mixing them fails.
    [dest] = names_on_nodes(redis_cluster, 1, avoid=keys.destinations())
    sync: Any = cluster_client
    publish_sync(sync, keys, e2e_config(dest))  # config load
    settings = make_settings(cluster_env(prefix, redis_cluster, None))
    client = async_client(settings)
    try:
        stored = await stored_destination(client, keys, dest)
        assert stored is not None
        off = Destination.model_validate_json(stored).model_copy(update={"enabled": False})
        assert not await swap_destination(client, keys, dest, expected=b"{}", new=off)
        assert await swap_destination(client, keys, dest, expected=stored, new=off)

        change = {1001: [("custom1", '"realized"', 1)]}
        assert merge_sync(sync, keys, dest, change, now_ms=1, window_ms=60_000).applied == 1
        with pytest.raises(DestinationBusy):
            await swap_destination(
                client,
                keys,
                dest,
                expected=off.model_dump_json().encode(),
                new=None,
                only_if_idle=True,
            )
        gone = off.model_dump_json().encode()
        assert await swap_destination(client, keys, dest, expected=gone, new=None)
        with pytest.raises(UnknownDestination):
            merge_sync(sync, keys, dest, change, now_ms=2, window_ms=60_000)
        # A producer that read the catalog before the deletion is refused by merge.lua.
        sync.hset(keys.destinations(), dest, gone)
        with pytest.raises(UnknownDestination):
            merge_sync(sync, keys, dest, change, now_ms=3, window_ms=60_000)
        publish_sync(sync, keys, e2e_config(dest))  # published again: it takes changes
        assert merge_sync(sync, keys, dest, change, now_ms=4, window_ms=60_000).applied == 1
    finally:
        await client.aclose()


def test_a_cluster_redis_url_needs_a_broker_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:7000/0")
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    with pytest.raises(SettingsError, match="BROKER_URL is required with REDIS_CLUSTER"):
        load_settings()
    for broker in ("redis://10.0.0.5:7000/1", "redis+cluster://10.0.0.6:7000"):
        monkeypatch.setenv("BROKER_URL", broker)
        with pytest.raises(SettingsError, match="BROKER_URL must not name the Redis Cluster"):
            load_settings()
    monkeypatch.setenv("BROKER_URL", "redis://10.0.0.9:6379/0")
    assert load_settings().celery_broker_url == "redis://10.0.0.9:6379/0"
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:7000/3")
    with pytest.raises(SettingsError, match="REDIS_URL: a Redis Cluster has only database 0"):
        load_settings()


def test_a_worker_refuses_to_start_on_a_cluster_without_a_broker() -> None:
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:7000/0", "REDIS_CLUSTER": "true"}
    env.pop("BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "app", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "BROKER_URL is required with REDIS_CLUSTER=true" in done.stderr


def test_every_key_of_a_destination_shares_its_slot() -> None:
    keys = Keys("p")
    per_dest = [
        getattr(keys, name)("d", 7) if name in _PER_PROSPECT else getattr(keys, name)("d")
        for name in _PER_DEST + _PER_PROSPECT
    ]
    assert {key_slot(k.encode()) for k in per_dest} == {key_slot(b"d")}


_PER_PROSPECT = ("pending", "versions", "inflight", "delivered")
_PER_DEST = (
    "due", "leases", "lease_tokens", "first_seen", "attempts", "failing_since", "drainers",
    "drainer_seq", "retired", "hold", "resumed", "invalid_mappings", "audience_map",
    "mapping_holders", "mapping_issues", "counters", "failures", "failures_recent",
    "bulk_batches", "bulk_state",
)  # fmt: skip


def test_a_wake_reaches_a_dispatcher_blocked_on_the_cluster(
    prefix: str, redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    keys = Keys(prefix)
    client: Any = cluster_client
    blocked: list[float] = []

    def dispatcher() -> None:
        started = time.monotonic()
        client.blpop([keys.wake()], timeout=5)
        blocked.append(time.monotonic() - started)

    thread = threading.Thread(target=dispatcher)
    thread.start()
    time.sleep(0.3)
    other: Any = redis_cluster.client()
    run_sync(other, wake(keys, "d"))
    thread.join(timeout=5)
    other.close()
    assert blocked and blocked[0] < 2, "the wake ended the blocking pop at once"


@pytest.fixture
def replicated_cluster() -> Iterator[LocalCluster]:
    """Three primaries with a replica each, for one test (it kills a primary)."""
    cluster = LocalCluster(replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_a_primary_killed_and_its_replica_promoted_keeps_changes_flowing(
    prefix: str, replicated_cluster: LocalCluster
) -> None:
    cluster, keys = replicated_cluster, Keys(prefix)
    settings = make_settings(cluster_env(prefix, cluster, None))
    producer = Producer(settings)
    client: Any = producer.redis
    [dest] = names_on_nodes(cluster, 1, avoid=keys.destinations())
    publish_sync(client, keys, e2e_config(dest))
    before = producer.send(dest, [profile(1001, firstName="Ada")])
    assert before.report.accepted == 1
    primary = cluster.node_of(dest)
    with redis.Redis(host="127.0.0.1", port=primary) as node:
        # The replica has it once it acknowledges the primary's offset after the write (WAIT
        # would not say so: it waits for the writes of its own connection, here none).
        written = node.execute_command("ROLE")[1]

        def replicated() -> bool:
            acks = [int(r[2]) for r in node.execute_command("ROLE")[2]]
            return bool(acks) and min(acks) >= written

        wait_until(replicated, timeout_s=5, what="the replica to acknowledge the change")

    cluster.kill(primary)

    def merged() -> bool:
        try:
            return producer.send(dest, [profile(1002, firstName="Grace")]).report.accepted == 1
        except (StoreUnavailable, redis.RedisError) as exc:
            # What `outreach-sync ingest --retry-for` waits out rather than stops on.
            assert transient_cause(exc) is not None, repr(exc)
            return False

    wait_until(merged, timeout_s=20, what="the replica's promotion to take changes")
    assert cluster.node_of(dest) != primary
    assert client.zcard(keys.due(dest)) == 2  # the change accepted before the kill survived
    assert client.hget(keys.pending(dest, 1001), "firstName") == b'"Ada"'

    producer.close()


def test_a_cluster_failing_over_is_waited_out_by_producers() -> None:
    for exc in (ClusterDownError("The cluster is down"), TryAgainError("TRYAGAIN")):
        assert transient_cause(exc) is exc
        assert transient_cause(_wrapped(exc)) is exc


def _wrapped(exc: Exception) -> StoreUnavailable:
    try:
        raise StoreUnavailable(str(exc)) from exc
    except StoreUnavailable as store:
        return store


async def test_the_http_api_on_the_cluster(
    prefix: str, redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """Admin edits, a producer key, ingestion, status, the failed-key throttle and deletion."""
    keys = Keys(prefix)
    publish_sync(cast(Any, cluster_client), keys, e2e_config())  # the connection "conn"
    [dest] = names_on_nodes(redis_cluster, 1, avoid=keys.destinations())
    env = cluster_env(prefix, redis_cluster, None)
    env |= {"ADMIN_API_KEY": ADMIN_KEY, "AUTH_FAILURE_LIMIT": "3/minute"}
    settings = make_settings(env)
    runner = web.AppRunner(make_app(settings))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}/v1"
    client = async_client(settings)
    try:
        _, secret = await ProducerKeys(client, keys).create("crm", [dest])
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        producer = {"Authorization": f"Bearer {secret}"}
        body = {"id": dest, "name": "CRM", "connection": "conn", "audiences": {"aud-1": 1}}
        status, doc = await call("POST", f"{base}/admin/destinations", admin, body)
        assert status == 201, doc
        profiles = {"profiles": [profile(1001, firstName="Ada")]}
        status, doc = await call("POST", f"{base}/destinations/{dest}/profiles", producer, profiles)
        assert status == 202 and doc["accepted"] == 1, doc
        status, doc = await call("GET", f"{base}/destinations/{dest}/status", producer)
        assert status == 200 and doc["pending"] == 1, doc
        gone = await call("DELETE", f"{base}/admin/destinations/{dest}?force=true", admin)
        assert gone[0] == 200
        status, _ = await call("POST", f"{base}/destinations/{dest}/profiles", producer, profiles)
        assert status == 404
        # Past AUTH_FAILURE_LIMIT wrong keys, the client's address is refused (limits' window).
        wrong = {"Authorization": "Bearer not-a-key"}
        url = f"{base}/destinations/{dest}/status"
        codes = [(await call("GET", url, wrong))[0] for _ in range(4)]
        assert codes == [401, 401, 401, 429]
    finally:
        await client.aclose()
        await runner.cleanup()


ADMIN_KEY = "cluster-test-admin-key-1234567890"


async def call(method: str, url: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)
