"""Wakes drain tasks when prospects fall due, without polling in a tight loop.

One dispatcher runs in each worker's main process. It blocks on Redis (``BLPOP`` on the wake
list, with a timeout until the next due time) and asks ``poll.lua`` how many drain slots to
start; slots are allotted atomically in Redis, so several hosts' dispatchers never start more
than ``max_drainers`` drains for one destination between them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from app.core import keys as K
from app.core.errors import unreachable
from app.core.settings import Settings
from app.store.prospects import poll_sync

log = logging.getLogger(__name__)

StartDrain = Callable[[str, str], None]

#: How often a dispatcher says it is alive; a worker silent for 3 beats counts as gone.
HEARTBEAT_S = 5.0


def live_workers(client: redis.Redis, keys: K.Keys, *, now_ms: int | None = None) -> list[str]:
    """Hostnames of the workers whose dispatcher beat recently (what ops see in ``status``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = now_ms - int(3 * HEARTBEAT_S * 1000)
    raw = cast("list[bytes]", client.zrangebyscore(keys.workers(), since, "+inf"))
    return sorted(r.decode() for r in raw)


class Dispatcher:
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        start_drain: StartDrain,
        *,
        name: str | None = None,
    ) -> None:
        self._redis = client
        self._name = name  # the worker's hostname, for the heartbeat (None: no heartbeat)
        self._beat_at = float("-inf")
        self._settings = settings
        self._keys = settings.keys
        self._start_drain = start_drain
        self._stop = threading.Event()
        # A drain slot outlives its task's budget a little, in case the task never started.
        self._slot_ttl_ms = int(settings.drain_budget_s * 1000) + settings.lease_ms

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._heartbeat()
                sleep_s = self.tick()
            except Exception as exc:
                # The thread must outlive anything: a worker whose dispatcher died would look
                # healthy and never drain again. Only an outage is a mere warning; anything
                # else (a script's error, the broker refusing a task) is logged as a bug.
                if unreachable(exc):
                    log.warning("dispatcher cannot reach Redis: %s", exc)
                else:
                    log.exception("dispatcher tick failed; trying again")
                sleep_s = K.DISPATCH_MAX_SLEEP_S
            self._wait(sleep_s)
        if self._name is not None:
            with contextlib.suppress(redis.RedisError):  # it ages out of live_workers anyway
                self._redis.zrem(self._keys.workers(), self._name)

    def _heartbeat(self) -> None:
        if self._name is None or time.monotonic() - self._beat_at < HEARTBEAT_S:
            return
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._keys.workers(), {self._name: now_ms})
        # Workers gone for a day are forgotten.
        pipe.zremrangebyscore(self._keys.workers(), "-inf", now_ms - 86_400_000)
        pipe.execute()
        self._beat_at = time.monotonic()

    def tick(self) -> float:
        """Start the drains that are due; return how long to sleep until the next is."""
        now = int(time.time() * 1000)
        next_ms: int | None = None
        for raw in cast("list[bytes]", self._redis.hkeys(self._keys.destinations())):
            dest = raw.decode() if isinstance(raw, bytes) else str(raw)
            poll = poll_sync(
                self._redis,
                self._keys,
                dest,
                now_ms=now,
                batch=self._settings.claim_batch,
                max_drainers=self._settings.max_drainers,
                slot_ttl_ms=self._slot_ttl_ms,
            )
            for slot in poll.new_slots:
                try:
                    self._start_drain(dest, slot)
                except Exception:
                    # Not started: give the slot back, so the next tick can try again
                    # instead of waiting for the slot to expire.
                    self._redis.zrem(self._keys.drainers(dest), slot)
                    raise
            if poll.next_ms is not None and poll.next_ms > now:
                next_ms = poll.next_ms if next_ms is None else min(next_ms, poll.next_ms)
        if next_ms is None:
            return K.DISPATCH_MAX_SLEEP_S
        return min(K.DISPATCH_MAX_SLEEP_S, max(0.005, (next_ms - now) / 1000))

    def _wait(self, timeout_s: float) -> None:
        if self._stop.is_set():
            return
        try:
            self._redis.blpop([self._keys.wake()], timeout=timeout_s)
        except redis.RedisError:
            self._stop.wait(timeout_s)
