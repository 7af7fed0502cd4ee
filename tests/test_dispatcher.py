"""The dispatcher thread: it outlives a failing tick and says it is alive."""

from __future__ import annotations

import threading

import pytest
import redis

from app.config.destinations import parse_config
from app.core.keys import Keys
from app.delivery.dispatcher import Dispatcher, live_workers
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from tests.support import TEST_REDIS_URL, make_settings, settings_env, wait_until


def test_a_failing_drain_start_does_not_kill_the_dispatcher(
    prefix: str, rclient: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(settings_env(prefix, None, COALESCE_WINDOW_MS="0"))
    keys = Keys(prefix)
    conf = {
        "connections": [{"id": "c", "access_token": "t"}],
        "destinations": [{"id": "d", "name": "d", "connection": "c", "audiences": {"a": 1}}],
    }
    publish_sync(rclient, keys, parse_config(conf))
    started: list[str] = []
    failures = [RuntimeError("broker refused the task")]

    def start_drain(dest: str, slot: str) -> None:
        if failures:
            raise failures.pop()
        started.append(dest)
        rclient.zrem(keys.drainers(dest), slot)  # the drain "ran"; the prospect stays due

    client = redis.Redis.from_url(TEST_REDIS_URL)
    dispatcher = Dispatcher(client, settings, start_drain, name="w1@test")
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    profile = {
        "identityMap": {"OutreachId": [{"id": "5"}]},
        "segmentMembership": {"ups": {"a": {"status": "realized"}}},
    }
    producer = Producer(settings)
    assert producer.send("d", [profile]).report.accepted == 1
    producer.close()
    thread.start()
    try:
        wait_until(lambda: bool(started), timeout_s=10, what="a drain after the failed one")
        assert "dispatcher tick failed" in caplog.text
        assert live_workers(rclient, keys) == ["w1@test"]
    finally:
        dispatcher.stop()
        thread.join(timeout=5)
        client.close()
    assert not thread.is_alive()
    assert live_workers(rclient, keys) == []  # a clean stop says goodbye
