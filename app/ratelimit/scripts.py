"""The quota gate's Lua scripts (``lua/``) and their arguments: each script takes one JSON
document, typed here, instead of a row of positional strings (as the store's merge.lua)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from app.core.scripts import package_scripts


@dataclass(frozen=True, slots=True)
class ReserveArgs:
    """``quota_reserve.lua``: check the pause and reserve permits against the server's report.

    Times are epoch seconds; ``amount`` is the configured limit, ``free`` the permits free in
    our own window of it. The script sizes the careful reserve (``careful_share`` of the
    governing limit, at least ``careful_min``: below it requests go one at a time) and the
    headroom (``reserve_share`` of it, kept for the user) from the limit Outreach reported,
    which only it knows (see `app.ratelimit.governing`)."""

    now_s: float
    want: int
    probe_timeout_s: float
    careful_share: float
    careful_min: int
    fresh_s: float
    reserve_share: float
    amount: int
    free: int
    guard_s: float
    probe_first: bool
    grant: str
    hold_ms: int


@dataclass(frozen=True, slots=True)
class ObserveArgs:
    """``quota_observe.lua``: record what Outreach said (None: it said nothing of that).

    ``remaining``/``limit``/``reset_s``: its budget; ``pause_until_s``: a 429's resume time;
    ``sent_s``: when the answered request of ours left (None: not one of ours); ``answered``:
    False for a transport failure; ``grant``: the grant whose permit the request used."""

    now_s: float
    reset_s: float
    tolerance_s: float
    hold_ms: int
    remaining: int | None = None
    limit: int | None = None
    pause_until_s: float | None = None
    sent_s: float | None = None
    answered: bool = False
    grant: str = ""


@dataclass(frozen=True, slots=True)
class RefundArgs:
    """``quota_refund.lua``: give back ``permits`` of ``grant`` (``probe``: one was a probe)."""

    grant: str
    permits: int
    probe: bool
    hold_ms: int


@dataclass(frozen=True, slots=True)
class ShareArgs:
    """``share_take.lua``: take up to ``want`` of a part's ``cap`` per ``window_ms``."""

    now_ms: int
    window_ms: int
    cap: int
    want: int
    token: str


ScriptArgs = ReserveArgs | ObserveArgs | RefundArgs | ShareArgs


def encode(args: ScriptArgs) -> str:
    """The script's one argument. None fields are left out: Lua then reads them as nil (a
    JSON null would decode to ``cjson.null``, which Lua counts as true)."""
    doc: dict[str, Any] = {k: v for k, v in dataclasses.asdict(args).items() if v is not None}
    return json.dumps(doc, separators=(",", ":"))


#: The gate's scripts, loaded by the one loader (`app.core.scripts`).
SCRIPTS = package_scripts("app.ratelimit")
#: The scripts that keep the grants in flight run after their functions (``quota_grants.lua``).
_GRANTS = ("quota_grants",)
_WITH_GRANTS = frozenset({"quota_reserve", "quota_refund", "quota_observe", "quota_state"})


def script(client: aioredis.Redis, name: str) -> AsyncScript:
    """Script ``name`` of ``lua/`` for ``client``, registered once per client."""
    return SCRIPTS.aio(client, name, prelude=_GRANTS if name in _WITH_GRANTS else ())
