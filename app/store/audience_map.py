"""Audience -> mapping ID tables learned from the producer's data (``mapping_ids: "data"``).

AEP sends the Mapping ID a user typed per audience with every membership. The first mapping
of an audience is learned and kept in Redis (``lua/audience_learn.lua``, atomic across API
processes); the rules for a changed or contested mapping ID are the script's, described in
docs/aep.md. Every change and conflict is kept per audience as an *issue* for the status page
and the alerts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
import redis.asyncio as aioredis

from app.core.errors import store_error
from app.core.keys import Keys
from app.core.operations import Eval, Op
from app.core.scripts import package_scripts

Verdict = Literal["same", "new", "changed", "conflict"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one proposed (audience, mapping ID) pair."""

    verdict: Verdict
    #: ``changed``: the mapping ID the audience had; ``conflict``: the audience holding it.
    other: str | None = None


@dataclass(frozen=True, slots=True)
class Learned:
    """Decisions in proposal order, and the resulting table for every audience asked about."""

    decisions: tuple[Decision, ...]
    table: dict[str, int]


SCRIPTS = package_scripts("app.store")


def _call(
    keys: Keys, dest: str, proposals: Sequence[tuple[str, int]], lookups: Sequence[str], now_ms: int
) -> tuple[list[str], list[str]]:
    kk = [keys.audience_map(dest), keys.mapping_holders(dest), keys.mapping_issues(dest)]
    doc = {"p": [[a, n] for a, n in proposals], "q": list(lookups)}
    return kk, [str(now_ms), json.dumps(doc, separators=(",", ":"))]


def _decode(raw: bytes | str) -> Learned:
    doc = json.loads(raw)
    verdicts = doc["v"] if isinstance(doc["v"], list) else []  # cjson: {} for an empty list
    decisions = []
    for text in verdicts:
        verdict, _, other = str(text).partition(":")
        decisions.append(Decision(cast("Verdict", verdict), other or None))
    return Learned(tuple(decisions), {str(a): int(n) for a, n in doc["t"].items()})


def learn_op(
    keys: Keys,
    dest: str,
    proposals: Sequence[tuple[str, int]],
    lookups: Sequence[str] = (),
    *,
    now_ms: int,
) -> Op[Learned]:
    """Record ``proposals`` under the rules and look up ``lookups``; one atomic script call."""
    kk, args = _call(keys, dest, proposals, lookups, now_ms)
    try:
        raw = yield Eval(SCRIPTS, "audience_learn", kk, args)
    except redis.RedisError as exc:
        raise store_error(exc) from exc
    return _decode(cast("bytes", raw))


async def learned_table(client: aioredis.Redis, keys: Keys, dest: str) -> dict[str, int]:
    """Every learned audience -> mapping ID of ``dest``."""
    raw = await cast("Any", client.hgetall(keys.audience_map(dest)))
    return {k.decode(): int(v) for k, v in raw.items()}


async def mapping_issues(client: aioredis.Redis, keys: Keys, dest: str) -> list[dict[str, Any]]:
    """The latest mapping change or conflict of each audience, newest first."""
    raw = await cast("Any", client.hgetall(keys.mapping_issues(dest)))
    issues = [json.loads(v) for v in raw.values()]
    return sorted(issues, key=lambda i: -int(i.get("at_ms") or 0))


def forget_sync(client: redis.Redis, keys: Keys, dest: str, audience: str) -> int | None:
    """Drop an audience's learned mapping, freeing its mapping ID; returns that ID (if any)."""
    kk = [keys.audience_map(dest), keys.mapping_holders(dest), keys.mapping_issues(dest)]
    held = SCRIPTS.sync(client, "audience_forget")(keys=kk, args=[audience])
    return None if held is None else int(cast("bytes", held))


def learned_sync(client: redis.Redis, keys: Keys, dest: str) -> Mapping[str, int]:
    """Every learned audience -> mapping ID of ``dest`` (CLI)."""
    raw = cast("dict[bytes, bytes]", client.hgetall(keys.audience_map(dest)))
    return {k.decode(): int(v) for k, v in raw.items()}
