"""Alerts, evaluated by one process of the fleet at a time and sent once per incident.

Every ``ALERT_INTERVAL_S`` each worker's :class:`AlertLoop` tries to take a Redis lease; the
holder reads every destination's status, asks the rules (``app/ops/alerts.py``) what holds and
compares with the open incidents kept in Redis: a new incident is logged and POSTed to
``ALERT_WEBHOOK_URL`` once (``HSETNX`` decides, so even two evaluators could not both send),
a cleared one gets one recovery message (the incident stays open, marked recovering, until
it is sent). A webhook that does not answer is retried a few times, then again at the next
evaluation; it runs on its own thread and loop, never in a drain. The evaluator renews its
lease before each message, so a slow webhook never leaves two evaluators running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import aiohttp
import redis.asyncio as aioredis

from app.core.redis_client import async_client
from app.core.scripts import package_scripts
from app.core.settings import Settings
from app.ops.alerts import (
    WINDOW_COUNTERS,
    Condition,
    LastHour,
    conditions,
    snapshot_from_status,
    unreadable,
)
from app.ops.status import destination_status
from app.ratelimit.gate import gate_for
from app.store.prospects import ProspectStore
from app.store.registry import Registry

log = logging.getLogger(__name__)

#: Counter samples older than this are dropped; the rates look back one hour.
WINDOW_S = 3600
#: First webhook retry after this long, doubling each time.
RETRY_BASE_S = 0.5


@dataclass(frozen=True, slots=True)
class Notice:
    """One message about an incident: its start (``alert``) or its end (``recovery``)."""

    event: Literal["alert", "recovery"]
    key: str
    kind: str
    summary: str
    details: dict[str, Any]
    since_s: float
    at_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"source": "outreach-sync", **asdict(self)}


class Webhook:
    """POSTs notices as JSON with a timeout and retries; without a URL it only logs."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None) -> None:
        url = settings.alert_webhook_url
        self._url = url.get_secret_value() if url is not None else None
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=settings.alert_webhook_timeout_s)
        self._retries = settings.alert_webhook_retries
        backoff = sum(RETRY_BASE_S * 2**i for i in range(self._retries))
        #: The longest one ``send`` can take: every try timing out, every backoff waited.
        self.longest_send_s = settings.alert_webhook_timeout_s * (self._retries + 1) + backoff + 1

    async def send(self, notice: Notice) -> bool:
        """True once the webhook took it (2xx), or when there is no webhook."""
        if self._url is None or self._session is None:
            return True
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
            try:
                async with self._session.post(
                    self._url, json=notice.as_dict(), timeout=self._timeout
                ) as resp:
                    if resp.status < 300:
                        return True
                    problem = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # our request is wrong: retrying will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            log.warning("alert webhook failed: %s", problem, extra={"alert": notice.key})
        log.error("alert webhook gave up; will retry next evaluation", extra={"alert": notice.key})
        return False


class Evaluator:
    """One evaluation of every destination against the rules, with the incidents in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        webhook: Webhook,
        *,
        lease: Lease | None = None,
    ) -> None:
        self._redis = client
        self._settings = settings
        self._keys = settings.keys
        self._webhook = webhook
        #: Renewed before each send, so a long webhook retry never outlives the lease.
        self._lease = lease
        self._store = ProspectStore(client, settings.keys)
        # Cached like every reader's (decrypting tokens on each evaluation would be waste).
        self._registry = Registry(client, settings.keys)
        self._gate = gate_for(client, settings)

    async def evaluate(self, now_s: float | None = None) -> list[Notice]:
        """Raise new incidents, re-send unsent ones, recover cleared ones; the notices sent."""
        now = time.time() if now_s is None else now_s
        firing = {c.key: c for c in await self._conditions(now)}
        raw = await cast("Awaitable[dict[bytes, bytes]]", self._redis.hgetall(self._open_key))
        open_ = {k.decode(): json.loads(v) for k, v in raw.items()}
        sent: list[Notice] = []
        for key, cond in firing.items():
            if key not in open_:
                sent += await self._open(cond, now)
            elif open_[key].get("recovering"):
                # It holds again before its recovery was sent: the same incident goes on.
                await self._update(key, recovering=False, recovered_s=None)
            elif not open_[key]["notified"] and await self._claim(key):
                fresh = await self._incident(key)
                if fresh is None or fresh["notified"]:
                    await self._release(key)  # sent (or closed) since it was read
                else:
                    sent += await self._notify(_notice("alert", cond, fresh["since_s"], now))
        for key in open_:
            if key not in firing:
                sent += await self._close(key, now)
        return sent

    @property
    def _open_key(self) -> str:
        return self._keys.alerts_open()

    async def _open(self, cond: Condition, now: float) -> list[Notice]:
        incident = {**asdict(cond), "since_s": now, "notified": False}
        created = await cast(
            "Awaitable[int]", self._redis.hsetnx(self._open_key, cond.key, json.dumps(incident))
        )
        if not created or not await self._claim(cond.key):
            return []  # another evaluator raised it first
        log.warning("ALERT %s", cond.summary, extra={"alert": cond.key, **cond.details})
        return await self._notify(_notice("alert", cond, now, now))

    async def _claim(self, key: str) -> bool:
        """The right to send ``key``'s alert or recovery now (held until sent, or at most for
        the longest send)."""
        ms = int(self._webhook.longest_send_s * 1000)
        claim = self._redis.set(self._keys.alerts_sending(key), "1", nx=True, px=ms)
        return bool(await cast("Awaitable[bool | None]", claim))

    async def _release(self, key: str) -> None:
        await cast("Awaitable[int]", self._redis.delete(self._keys.alerts_sending(key)))

    async def _incident(self, key: str) -> dict[str, Any] | None:
        """``key``'s open incident as stored now (None: not open)."""
        raw = await cast("Awaitable[bytes | None]", self._redis.hget(self._open_key, key))
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    async def _update(self, key: str, **changes: Any) -> None:
        """Change fields of ``key``'s open incident (if it is still open)."""
        incident = await self._incident(key)
        if incident is not None:
            incident.update(changes)
            await cast(
                "Awaitable[int]", self._redis.hset(self._open_key, key, json.dumps(incident))
            )

    async def _send(self, notice: Notice) -> bool:
        """Send ``notice`` while this evaluator still holds the lease (renewed first, so it
        outlives the webhook's retries); False when unsent."""
        if self._lease is not None and not await self._lease.acquire():
            log.info("alert lease lost; leaving %s to its holder", notice.key)
            return False
        return await self._webhook.send(notice)

    async def _notify(self, notice: Notice) -> list[Notice]:
        """Send an incident's alert (its send lock is held; released when done)."""
        try:
            if not await self._send(notice):
                return []  # unsent: the next evaluation (of whichever process) tries again
            await self._update(notice.key, notified=True)
            return [notice]
        finally:
            # Whoever claims it next reads the incident afresh and sees it notified.
            await self._release(notice.key)

    async def _close(self, key: str, now: float) -> list[Notice]:
        """End an incident that no longer holds. Its recovery is sent under the send lock
        (never while another evaluator sends the incident's alert) and the incident is
        deleted only once the recovery is sent: an unsent one is retried at the next
        evaluation, like an unsent alert."""
        if not await self._claim(key):
            return []  # another evaluator is sending this incident's alert or recovery
        try:
            incident = await self._incident(key)
            if incident is None:
                return []  # another evaluator closed it
            cond = Condition(key, incident["kind"], incident["summary"], incident["details"])
            if not incident.get("recovering"):
                log.info("RECOVERED %s", cond.summary, extra={"alert": key, **cond.details})
            # A recovery of an alert nobody was told about would only confuse.
            if not incident["notified"]:
                await cast("Awaitable[int]", self._redis.hdel(self._open_key, key))
                return []
            at = float(incident.get("recovered_s") or now)
            if not incident.get("recovering"):
                await self._update(key, recovering=True, recovered_s=at)
            notice = _notice("recovery", cond, incident["since_s"], at)
            if not await self._send(notice):
                return []  # still open, marked recovering: the next evaluation sends it
            await cast("Awaitable[int]", self._redis.hdel(self._open_key, key))
            return [notice]
        finally:
            await self._release(key)

    async def _conditions(self, now: float) -> list[Condition]:
        # A broken destination comes with its status below; a broken connection only here.
        broken = await self._registry.broken()
        found = [unreadable(b) for b in broken if b.kind != "destination"]
        for dest in await self._registry.all_destination_ids():
            doc = await destination_status(
                dest, store=self._store, registry=self._registry, gate=self._gate, hours=1
            )
            if doc is None:
                continue
            snap = snapshot_from_status(doc)
            window = await self._window(dest, snap.counters, now)
            since = await self._pause_since(snap.user, snap.paused_until_s, now)
            found += conditions(snap, window, self._settings, pause_since_s=since, now_s=now)
        return found

    async def _window(self, dest: str, counters: Mapping[str, int], now: float) -> LastHour:
        key = self._keys.alerts_samples(dest)
        sample = {name: counters.get(name, 0) for name in WINDOW_COUNTERS}
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {json.dumps({"t": now, **sample}): now})
        pipe.zremrangebyscore(key, "-inf", now - WINDOW_S)
        pipe.zrange(key, 0, 0)
        pipe.expire(key, WINDOW_S * 2)
        _, _, oldest, _ = await pipe.execute()
        return LastHour.between(json.loads(oldest[0]) if oldest else sample, sample)

    async def _pause_since(self, user: str | None, until: float | None, now: float) -> float | None:
        if user is None:
            return None
        key = self._keys.alerts_pause_since()
        if until is None or until <= now:
            await cast("Awaitable[int]", self._redis.hdel(key, user))
            return None
        await cast("Awaitable[int]", self._redis.hsetnx(key, user, repr(now)))
        raw = await cast("Awaitable[bytes | None]", self._redis.hget(key, user))
        return float(raw) if raw is not None else now


def _notice(event: Literal["alert", "recovery"], c: Condition, since: float, at: float) -> Notice:
    return Notice(event, c.key, c.kind, c.summary, c.details, since, at)


class Lease:
    """The right to evaluate: one holder across every worker and host, expiring with it."""

    def __init__(self, client: aioredis.Redis, settings: Settings, *, ttl_s: float) -> None:
        self._redis = client
        self._key = settings.keys.alerts_lease()
        self._token = uuid.uuid4().hex
        self._ttl_ms = int(ttl_s * 1000)

    async def acquire(self) -> bool:
        """Take or renew the lease; False while another process holds it."""
        acquire = package_scripts("app.ops").aio(self._redis, "lease_acquire")
        return bool(await acquire(keys=[self._key], args=[self._token, self._ttl_ms]))

    async def release(self) -> None:
        release = package_scripts("app.core").aio(self._redis, "token_release")
        await release(keys=[self._key], args=[self._token])


class AlertLoop:
    """A thread with its own event loop that evaluates the alerts every ``ALERT_INTERVAL_S``
    while it holds the lease (started by each worker's main process)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        #: Rounds run so far (each tries the lease, and evaluates when it has it).
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        s = self._settings
        client = async_client(s)
        session = aiohttp.ClientSession() if s.alert_webhook_url is not None else None
        webhook = Webhook(s, session)
        # Renewed before each send too; long enough for one send however slow the webhook.
        ttl_s = max(3 * s.alert_interval_s, 10.0, webhook.longest_send_s + s.alert_interval_s)
        lease = Lease(client, s, ttl_s=ttl_s)
        evaluator = Evaluator(client, s, webhook, lease=lease)
        loop = asyncio.get_running_loop()
        try:
            # The first evaluation waits an interval too: a starting worker has drains to run.
            while not await loop.run_in_executor(None, self._stop.wait, s.alert_interval_s):
                try:
                    if await lease.acquire():
                        await evaluator.evaluate()
                except Exception:  # a bad evaluation must not end the loop; the next may work
                    log.exception("alert evaluation failed")
                self.rounds += 1
        finally:
            with contextlib.suppress(Exception):
                await lease.release()
            if session is not None:
                await session.close()
            await client.aclose()
