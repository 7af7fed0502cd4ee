"""Enrollment's state machines in Redis, one per (destination, prospect, sequence): noted when
a delivered audience field calls for it, claimed under a lease, settled with Outreach's
answer (``lua/``: every script touches one destination's keys, all declared)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis
import redis.asyncio as aioredis

from app.core.keys import Keys
from app.core.scripts import package_scripts
from app.store.registry import any_destination_of

SCRIPTS = package_scripts("app.enroll")
PRELUDE = ("enroll_rules",)

Kind = Literal["in", "out"]
#: What an enrollment's state ends as (``retry``: sent again later).
Final = Literal["enrolled", "already", "refused", "failed", "left", "cancelled", "dry"]


@dataclass(frozen=True, slots=True)
class Intent:
    """A delivered audience change that calls for an enrollment ("in") or an exit ("out")."""

    prospect: int
    sequence: int
    audience: str
    kind: Kind
    reenroll: bool = False
    on_exit: str = "none"


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed enrollment or exit, with what its record says."""

    prospect: int
    sequence: int
    audience: str
    op: Literal["enroll", "exit"]
    #: The last send's outcome is unknown: look it up before sending anything.
    unknown: bool
    attempts: int
    #: The prospect left (or re-entered) while it was being sent.
    then: str | None = None
    on_exit: str = "none"

    @property
    def member(self) -> str:
        return f"{self.prospect}:{self.sequence}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a claimed job ends (``state`` final) or when it is sent again (``retry``)."""

    state: Final | Literal["retry"]
    count: str | None = None
    due_ms: int = 0
    unknown: bool = False
    tries: int = 1
    why: str | None = None
    state_id: int | None = None

    def encode(self) -> str:
        doc: dict[str, Any] = {"st": self.state}
        if self.count:
            doc["count"] = self.count
        if self.state == "retry":
            doc.update(due=self.due_ms, tries=self.tries)
            if self.unknown:
                doc["unk"] = 1
        if self.why:
            doc["why"] = self.why[:300]
        if self.state_id is not None:
            doc["id"] = self.state_id
        return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Figures:
    """A destination's enrollment figures: per audience and outcome, waiting, paused."""

    by_audience: dict[str, dict[str, int]] = field(default_factory=dict)
    waiting: int = 0
    paused_until_ms: int = 0
    paused_reason: str = ""


def _job(member: str, raw: str) -> Job:
    doc = json.loads(raw)
    pid, _, seq = member.partition(":")
    return Job(
        prospect=int(pid),
        sequence=int(seq),
        audience=str(doc.get("aud", "")),
        op="exit" if doc.get("op") == "exit" else "enroll",
        unknown=bool(doc.get("unk")),
        attempts=int(doc.get("n") or 0),
        then=doc.get("nx"),
        on_exit=str(doc.get("ox") or doc.get("nox") or "none"),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class EnrollStore:
    """The enrollment keys of every destination on one Redis."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def note(
        self,
        dest: str,
        token: str,
        intents: Sequence[Intent],
        *,
        now_ms: int,
        by_email: str | None = None,
    ) -> int:
        """Record ``intents`` if the claims of their prospects are still ``token``'s (with
        ``by_email``: the claim of the email whose create made the prospect)."""
        if not intents:
            return 0
        k = self.keys
        leases = k.lease_tokens(dest) if by_email is None else k.email_lease_tokens(dest)
        kk = [leases, k.enroll_states(dest), k.enroll_due(dest), k.enroll_counts(dest)]
        owner = [] if by_email is None else [by_email]
        doc = [
            [i.prospect, i.sequence, i.audience, i.kind, int(i.reenroll), i.on_exit, *owner]
            for i in intents
        ]
        script = SCRIPTS.aio(self.redis, "note", prelude=PRELUDE)
        return int(await script(keys=kk, args=[token, now_ms, json.dumps(doc)]))

    async def claim(
        self, dest: str, token: str, *, now_ms: int, lease_ms: int, most: int
    ) -> list[Job]:
        """Due enrollments and exits, now ``token``'s until the lease ends."""
        k = self.keys
        kk = [k.enroll_states(dest), k.enroll_due(dest), k.enroll_pause(dest)]
        flat = await SCRIPTS.aio(self.redis, "claim")(keys=kk, args=[now_ms, lease_ms, token, most])
        pairs = [_text(x) for x in flat]
        return [_job(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]

    async def settle(
        self, dest: str, token: str, job: Job, outcome: Outcome, *, now_ms: int
    ) -> bool:
        """Record ``job``'s outcome; False when its claim was taken over meanwhile."""
        k = self.keys
        kk = [k.enroll_states(dest), k.enroll_due(dest), k.enroll_counts(dest)]
        script = SCRIPTS.aio(self.redis, "settle", prelude=PRELUDE)
        args: list[str | int] = [token, now_ms, job.member, outcome.encode()]
        return bool(await script(keys=kk, args=args))

    async def renew(self, dest: str, token: str, job: Job, *, until_ms: int) -> bool:
        """Extend ``job``'s lease to ``until_ms``; False when its claim was taken over."""
        kk = [self.keys.enroll_states(dest), self.keys.enroll_due(dest)]
        renew = SCRIPTS.aio(self.redis, "renew")
        return bool(await renew(keys=kk, args=[job.member, token, until_ms]))

    async def pause(self, dest: str, *, until_ms: int, reason: str) -> None:
        """Send no enrollment of ``dest`` before ``until_ms`` (fields go on)."""
        key = self.keys.enroll_pause(dest)
        await cast(
            "Awaitable[int]", self.redis.hset(key, mapping={"until_ms": until_ms, "reason": reason})
        )

    async def resume(self, dest: str, *, now_ms: int) -> int:
        """Lift a pause now (an operator fixed the scope or the mailbox): what waited for
        it is due at once. Returns how many."""
        k = self.keys
        kk = [k.enroll_pause(dest), k.enroll_due(dest), k.enroll_states(dest)]
        return int(await SCRIPTS.aio(self.redis, "resume")(keys=kk, args=[now_ms]))

    async def state(self, dest: str, prospect: int, sequence: int) -> dict[str, Any] | None:
        """One enrollment's record (tests, the CLI)."""
        raw = await cast(
            "Awaitable[bytes | None]",
            self.redis.hget(self.keys.enroll_states(dest), f"{prospect}:{sequence}"),
        )
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    async def reset(self, dest: str, prospect: int, sequence: int) -> None:
        """Forget a settled enrollment so that it may be noted again (a failure's replay)."""
        await cast(
            "Awaitable[int]",
            self.redis.hdel(self.keys.enroll_states(dest), f"{prospect}:{sequence}"),
        )

    async def figures(self, dest: str) -> Figures:
        """Counts per audience and outcome, how many wait, and any pause."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.enroll_counts(dest))
            pipe.zcard(k.enroll_due(dest))
            pipe.hgetall(k.enroll_pause(dest))
            counts, waiting, pause = await pipe.execute()
        by: dict[str, dict[str, int]] = {}
        for name, n in counts.items():
            aud, _, what = _text(name).rpartition("|")
            by.setdefault(aud, {})[what] = int(n)
        pause = {_text(a): _text(b) for a, b in pause.items()}
        return Figures(
            by_audience=by,
            waiting=int(waiting),
            paused_until_ms=int(pause.get("until_ms", 0)),
            paused_reason=pause.get("reason", ""),
        )


def requeue_sync(
    client: redis.Redis, keys: Keys, dest: str, record: Mapping[str, Any], *, now_ms: int
) -> bool:
    """Send a refused or failed enrollment again (its failure record replayed)."""
    enrollment = record["enrollment"]
    member = f"{int(record['prospect'])}:{int(enrollment['sequence'])}"
    kk = [keys.enroll_states(dest), keys.enroll_due(dest)]
    script = SCRIPTS.sync(client, "requeue")
    return bool(script(keys=kk, args=[member, str(enrollment["audience"]), now_ms]))


async def connection_enrolls(client: aioredis.Redis, keys: Keys, conn: str) -> bool:
    """Whether any destination of ``conn`` enrolls into sequences (the connection then needs
    the sequence scopes, ``app.connections.oauth.SEQUENCE_SCOPES``)."""

    def enrolls(doc: dict[str, Any]) -> bool:
        sequencing = doc.get("sequencing")
        return isinstance(sequencing, dict) and bool(sequencing.get("sequences"))

    return await any_destination_of(client, keys, conn, enrolls)
