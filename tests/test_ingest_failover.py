"""``outreach-sync ingest`` while Redis goes away: it waits a bounded time, saying so, and
either finishes when Redis is back or fails with one line saying what was stored."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import ROOT, LocalRedis, e2e_config, settings_env, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

D = "e2e"
PROFILES = 2500  # three of the command's chunks of 1000


def _profiles(path: Path, n: int) -> Path:
    lines = (
        json.dumps(
            {
                "identityMap": {"OutreachId": [{"id": str(i)}]},
                "timestamp": "2026-01-02T03:04:05Z",
                "segmentMembership": {"ups": {"aud-1": {"status": "realized"}}},
            }
        )
        for i in range(1, n + 1)
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest(server: LocalRedis, prefix: str, file: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**settings_env(prefix, None, REDIS_URL=server.url), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "app", "ingest", str(file), "-d", D, "-q", *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _published(server: LocalRedis, prefix: str) -> redis.Redis:
    client = redis.Redis.from_url(server.url)
    publish_sync(client, Keys(prefix), e2e_config(D))
    return client


def test_ingest_waits_for_redis_to_come_back_and_stores_everything(
    local_redis: LocalRedis, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    _published(local_redis, prefix).close()
    local_redis.kill()  # a failover in progress: nothing answers
    proc = _ingest(local_redis, prefix, _profiles(tmp_path / "p.ndjson", PROFILES))
    assert proc.stderr is not None
    said = proc.stderr.readline()
    assert "Redis" in said and "retrying" in said, said
    local_redis.start()  # the new master (AOF: the configuration is still there)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, said + err
    assert "Traceback" not in err
    assert json.loads(out)["accepted"] == PROFILES
    client = redis.Redis.from_url(local_redis.url)
    assert client.zcard(keys.due(D)) == PROFILES
    assert int(client.hget(keys.counters(D), "profiles_received") or 0) == PROFILES
    client.close()


def test_ingest_gives_up_after_its_retry_time_with_one_line_naming_the_cause(
    local_redis: LocalRedis, prefix: str, tmp_path: Path
) -> None:
    _published(local_redis, prefix).close()
    local_redis.kill()
    started = time.monotonic()
    proc = _ingest(
        local_redis, prefix, _profiles(tmp_path / "p.ndjson", PROFILES), "--retry-for", "2"
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    assert out == "" and "Traceback" not in err
    *waiting, last = err.strip().splitlines()
    assert waiting and all("retrying" in line for line in waiting)
    assert last.startswith("error: Redis unavailable")
    assert "Connection refused" in last or "connecting to" in last, last
    assert "no profile was stored" in last and "resend with --skip 0" in last


def test_a_resend_of_stored_profiles_is_harmless(
    local_redis: LocalRedis, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    client = _published(local_redis, prefix)
    file = _profiles(tmp_path / "p.ndjson", 10)

    def state() -> tuple[object, ...]:
        pending = [client.hgetall(keys.pending(D, p)) for p in range(1, 11)]
        versions = [client.hgetall(keys.versions(D, p)) for p in range(1, 11)]
        return client.zrange(keys.due(D), 0, -1, withscores=True), pending, versions

    first = _ingest(local_redis, prefix, file)
    assert first.communicate(timeout=60) and first.returncode == 0
    before = state()
    time.sleep(0.01)  # a later arrival: a resend must not move the due time either
    again = _ingest(local_redis, prefix, file)
    assert again.communicate(timeout=60) and again.returncode == 0
    wait_until(lambda: state() == before, timeout_s=1, what="the same stored state")
    client.close()
