"""Redis operations written once for synchronous and asyncio callers.

An operation is a generator: it yields each step it needs Redis to take (a Lua script call, or
commands sent in one round trip) and is sent the reply, or has the ``RedisError`` thrown in
at the ``yield``. ``run_sync`` and ``run_async`` drive it with a client of their kind, so the
loops, retries and decisions on replies exist once and each adapter is a line.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from app.core.scripts import LuaScripts

T = TypeVar("T")
Pipeline = redis.client.Pipeline | aioredis.client.Pipeline


@dataclass(frozen=True, slots=True)
class Eval:
    """Run one Lua script; the reply is the script's."""

    scripts: LuaScripts
    name: str
    keys: Sequence[str]
    args: Sequence[Any]

    def run_sync(self, client: redis.Redis) -> Any:
        return self.scripts.sync(client, self.name)(keys=self.keys, args=self.args)

    async def run_async(self, client: aioredis.Redis) -> Any:
        return await self.scripts.aio(client, self.name)(keys=self.keys, args=self.args)


@dataclass(frozen=True, slots=True)
class Commands:
    """Send the commands ``queue`` puts on a pipeline in one round trip (no transaction);
    the reply is the list of their replies."""

    queue: Callable[[Pipeline], object]

    def run_sync(self, client: redis.Redis) -> Any:
        pipe = client.pipeline(transaction=False)
        self.queue(pipe)
        return pipe.execute()

    async def run_async(self, client: aioredis.Redis) -> Any:
        pipe = client.pipeline(transaction=False)
        self.queue(pipe)
        return await pipe.execute()


Step = Eval | Commands
#: An operation: yields steps, is sent their replies, returns its result.
Op = Generator[Step, Any, T]


class _Driver:
    """Feeds an operation its replies; ``done`` once it has returned ``result``."""

    def __init__(self, op: Op[Any]) -> None:
        self._op = op
        self.done = False
        self.result: Any = None
        self.step = self._advance(lambda: next(op))

    def reply(self, value: Any) -> None:
        self.step = self._advance(lambda: self._op.send(value))

    def fail(self, error: redis.RedisError) -> None:
        self.step = self._advance(lambda: self._op.throw(error))

    def _advance(self, resume: Callable[[], Step]) -> Step:
        try:
            return resume()
        except StopIteration as stop:
            self.done, self.result = True, stop.value
            return Commands(lambda _: None)


def run_sync(client: redis.Redis, op: Op[T]) -> T:
    """Run ``op`` with a synchronous client."""
    driver = _Driver(op)
    while not driver.done:
        try:
            reply = driver.step.run_sync(client)
        except redis.RedisError as exc:
            driver.fail(exc)
        else:
            driver.reply(reply)
    result: T = driver.result
    return result


async def run_async(client: aioredis.Redis, op: Op[T]) -> T:
    """Run ``op`` with an asyncio client."""
    driver = _Driver(op)
    while not driver.done:
        try:
            reply = await driver.step.run_async(client)
        except redis.RedisError as exc:
            driver.fail(exc)
        else:
            driver.reply(reply)
    result: T = driver.result
    return result
