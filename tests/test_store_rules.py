"""The store's and the producer's rules without Redis: operations driven by hand (each step
answered in memory), an injected clock instead of sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from app.config.destinations import Destination
from app.core.errors import StoreUnavailable, UnknownDestination
from app.core.keys import Keys
from app.core.operations import Commands, Eval, Op, run_async, run_sync
from app.core.scripts import LuaScripts
from app.ingest.batch import evaluate_batch
from app.ingest.producer import FIRST_WAIT_S, MAX_WAIT_S, send_patiently
from app.store.prospects import MERGE_CHUNK, MergeResult, effective_window_ms, merge_op

KEYS = Keys("t")
DEST = Destination(id="d", name="D", connection="c", audiences={"a1": 1, "a2": 2})


def drive(op: Op[Any], replies: list[Any]) -> tuple[list[Any], Any]:
    """Run ``op`` answering its steps with ``replies`` in turn (an exception is thrown in);
    returns the steps it took and its result."""
    steps: list[Any] = []
    try:
        step = next(op)
        for reply in replies:
            steps.append(step)
            step = op.throw(reply) if isinstance(reply, Exception) else op.send(reply)
        steps.append(step)
        raise AssertionError(f"the operation wanted more than {len(replies)} replies")
    except StopIteration as done:
        return steps, done.value


def changes(n: int) -> dict[int, list[tuple[str, str, int]]]:
    return {p: [("custom1", '"realized"', 5)] for p in range(1, n + 1)}


# Merge --------------------------------------------------------------------------------


def test_merge_sends_chunks_sums_their_replies_and_wakes_once_when_some_fell_due() -> None:
    op = merge_op(KEYS, "d", changes(MERGE_CHUNK + 1), now_ms=1000, window_ms=50)
    steps, total = drive(op, [[1], [1, 2, 0], [0, 1, 3], None])
    known, evals, wake = steps[0], steps[1:3], steps[3]
    assert isinstance(known, Commands) and isinstance(wake, Commands)
    assert [type(s) for s in evals] == [Eval, Eval]
    assert evals[0].args[:3] == [1000, 50, "d"]
    assert total == MergeResult(newly_due=1, applied=3, stale=3)


def test_merge_does_not_wake_when_nothing_fell_due() -> None:
    op = merge_op(KEYS, "d", changes(3), now_ms=0, window_ms=0)
    steps, total = drive(op, [[1], [0, 3, 0]])
    assert len(steps) == 2 and total == MergeResult(0, 3, 0)


def test_merge_of_nothing_takes_no_step() -> None:
    assert drive(merge_op(KEYS, "d", {1: []}, now_ms=0, window_ms=0), []) == ([], MergeResult())


def test_merge_errors_say_what_they_mean() -> None:
    with pytest.raises(UnknownDestination):  # never published: not in the catalog
        drive(merge_op(KEYS, "d", changes(1), now_ms=0, window_ms=0), [[0]])
    gone = redis.ResponseError("NODEST destination d does not exist")
    with pytest.raises(UnknownDestination):  # deleted since (merge.lua's retired marker)
        drive(merge_op(KEYS, "d", changes(1), now_ms=0, window_ms=0), [[1], gone])
    down = redis.ConnectionError("Connection refused")
    with pytest.raises(StoreUnavailable) as info:
        drive(merge_op(KEYS, "d", changes(1), now_ms=0, window_ms=0), [down])
    assert info.value.__cause__ is down


# The drivers ------------------------------------------------------------------------------


class FakePipe:
    def __init__(self, reply: Any) -> None:
        self.reply, self.queued = reply, 0

    def rpush(self, *_: Any) -> None:
        self.queued += 1

    def execute(self) -> Any:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class FakeClient:
    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def pipeline(self, transaction: bool) -> FakePipe:
        assert transaction is False
        return FakePipe(self.reply)


def pushed_then(reply_seen: list[Any]) -> Op[str]:
    try:
        reply_seen.append((yield Commands(lambda pipe: pipe.rpush("k", "v"))))
    except redis.ConnectionError:
        return "handled"
    return "done"


def test_run_sync_sends_replies_and_throws_redis_errors_into_the_operation() -> None:
    seen: list[Any] = []
    assert run_sync(FakeClient([1]), pushed_then(seen)) == "done"  # type: ignore[arg-type]
    assert seen == [[1]]
    down = FakeClient(redis.ConnectionError("gone"))
    assert run_sync(down, pushed_then([])) == "handled"  # type: ignore[arg-type]


def test_run_async_drives_the_same_operation() -> None:
    class AsyncPipe(FakePipe):
        async def execute(self) -> Any:  # type: ignore[override]
            return FakePipe.execute(self)

    class AsyncClient(FakeClient):
        def pipeline(self, transaction: bool) -> AsyncPipe:
            return AsyncPipe(self.reply)

    seen: list[Any] = []
    assert asyncio.run(run_async(AsyncClient([1]), pushed_then(seen))) == "done"  # type: ignore[arg-type]
    down = AsyncClient(redis.ConnectionError("gone"))
    assert asyncio.run(run_async(down, pushed_then([]))) == "handled"  # type: ignore[arg-type]


def test_each_script_is_registered_once_per_client() -> None:
    class Client:
        def __init__(self) -> None:
            self.registered: list[str] = []

        def register_script(self, text: str) -> object:
            self.registered.append(text)
            return object()

    scripts, one, two = LuaScripts("app.store"), Client(), Client()
    first = scripts.sync(one, "poll")  # type: ignore[arg-type]
    assert scripts.sync(one, "poll") is first  # type: ignore[arg-type]
    scripts.sync(one, "merge")  # type: ignore[arg-type]
    scripts.sync(two, "poll")  # type: ignore[arg-type]
    assert len(one.registered) == 2 and len(two.registered) == 1
    assert one.registered[0] == scripts.source("poll") and "ZADD" in scripts.source("merge")


# Windows and coalescing ---------------------------------------------------------------------


def test_a_destinations_own_window_wins_even_when_zero() -> None:
    assert effective_window_ms(DEST, 1000) == 1000
    assert effective_window_ms(DEST.model_copy(update={"coalesce_window_ms": 0}), 1000) == 0


def membership(status: str, ts: int) -> dict[str, Any]:
    return {"status": status, "lastQualificationTime": ts}


def test_a_batch_keeps_the_newest_change_per_prospect_and_field() -> None:
    t = 1_700_000_000_000
    older = {
        "identityMap": {"OutreachId": [{"id": "7"}]},
        "segmentMembership": {"ups": {"a1": membership("realized", t + 5)}},
    }
    newer = {
        "identityMap": {"OutreachId": [{"id": "7"}]},
        "segmentMembership": {
            "ups": {"a1": membership("exited", t + 9), "a2": membership("existing", t)}
        },
    }
    late_old = {**older}  # arrives last, but is older: it does not win
    batch = evaluate_batch([older, newer, late_old], DEST, received_ms=t + 60_000)
    assert sorted(batch.changes[7]) == [
        ("custom1", '"exited"', t + 9),
        ("custom2", '"existing"', t),
    ]
    tie = {
        "identityMap": {"OutreachId": [{"id": "7"}]},
        "segmentMembership": {"ups": {"a1": membership("existing", t + 9)}},
    }
    batch = evaluate_batch([newer, tie], DEST, received_ms=t + 60_000)
    assert ("custom1", '"existing"', t + 9) in batch.changes[7]  # a tie: the later arrival


def test_audiences_are_counted_from_the_one_walk_even_for_a_rejected_profile() -> None:
    t = 1_700_000_000_000
    two_namespaces = {
        "ups": {"a1": membership("realized", t)},
        "x": {"a1": membership("exited", t + 1)},
    }
    broken = {
        "identityMap": "not an object",
        "segmentMembership": {**two_namespaces, "bad": {"a2": {"status": "nonsense"}}},
    }
    batch = evaluate_batch([broken], DEST, received_ms=t + 60_000)
    [res] = batch.results
    assert res.outcome == "rejected" and res.audiences == ((1, "exited"),)
    assert batch.report.audiences == {"m1:received:exited": 1, "m1:rejected": 1}


# A producer's patience ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now, self.waits = 0.0, []  # type: ignore[var-annotated]

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.waits.append(s)
        self.now += s


def test_a_transient_failure_is_waited_out_with_growing_waits() -> None:
    clock, said = Clock(), []
    failures = [redis.ConnectionError("refused")] * 6 + [StoreUnavailable("x")]
    failures[-1].__cause__ = redis.ReadOnlyError("replica")

    def send() -> str:
        if failures:
            raise failures.pop(0)
        return "sent"

    got = send_patiently(
        send,
        retry_for_s=60,
        on_wait=lambda e, left: said.append(left),
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == "sent" and len(said) == 7
    assert clock.waits == [FIRST_WAIT_S * 2**i for i in range(4)] + [MAX_WAIT_S] * 3


def test_patience_ends_at_the_deadline_with_the_last_failure() -> None:
    clock = Clock()

    def send() -> str:
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        send_patiently(send, retry_for_s=3, on_wait=lambda *_: None, clock=clock, sleep=clock.sleep)
    assert sum(clock.waits) == 3


def test_a_failure_waiting_cannot_cure_is_raised_at_once() -> None:
    clock = Clock()

    def send() -> str:
        raise StoreUnavailable("NOPERM")

    with pytest.raises(StoreUnavailable):
        send_patiently(
            send, retry_for_s=60, on_wait=lambda *_: None, clock=clock, sleep=clock.sleep
        )
    assert clock.waits == []
