"""Which mailbox an enrollment sends from: a configured id, the prospect owner's default
mailbox or the connection user's; a user's default is looked up once and cached in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import redis.asyncio as aioredis

from app.config.sequencing import SequenceRule
from app.core.keys import ENROLL_MAILBOX_TTL_S, Keys
from app.enroll.calls import default_mailbox, owner_of
from app.outreach.client import Response

#: Sends one GET (``path``, query) on a permit; None when it could not be read.
Get = Callable[[str, dict[str, str] | None], Awaitable[Response]]


class NoMailbox(Exception):
    """No mailbox to send from; ``reason`` is a refusal reason (rules.PAUSING or not)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(reason, text)
        self.reason = reason
        self.text = text


class Mailboxes:
    """Resolves and caches default mailboxes per connection and user."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        # One lookup per user at a time in this process: enrollments sent side by side
        # wait for the first one's answer instead of each asking Outreach.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def resolve(
        self, rule: SequenceRule, *, conn_id: str, conn_user: str, prospect: int, get: Get
    ) -> int:
        """The mailbox id for ``prospect``; raises `NoMailbox`."""
        if isinstance(rule.mailbox, int):
            return rule.mailbox
        user = conn_user
        if rule.mailbox == "owner":
            resp = await get(f"prospects/{prospect}", None)
            owner = owner_of(resp.body) if resp.status == 200 else None
            if owner is None:
                raise NoMailbox("no_owner", "the prospect has no owner to send from")
            user = owner
        return await self._default(conn_id, user, get)

    async def _default(self, conn_id: str, user: str, get: Get) -> int:
        async with self._locks.setdefault((conn_id, user), asyncio.Lock()):
            return await self._cached_default(conn_id, user, get)

    async def _cached_default(self, conn_id: str, user: str, get: Get) -> int:
        key = self.keys.mailbox_cache(conn_id)
        cached = await cast("Awaitable[bytes | None]", self.redis.hget(key, user))
        if cached is not None:
            return int(cached)
        resp = await get(f"users/{user}", {"include": "mailbox"})
        found = default_mailbox(resp.body) if resp.status == 200 else None
        if found is None:
            raise NoMailbox("mailbox_missing", f"user {user} has no default mailbox")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, user, str(found))
            pipe.expire(key, ENROLL_MAILBOX_TTL_S)
            await pipe.execute()
        return found
