"""The quota gate's Lua scripts (``lua/``) and their arguments: each script takes one JSON
document, typed here, instead of a row of positional strings (as the store's merge.lua)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


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


def lua(name: str, *, grants: bool = False) -> str:
    """A script's text; with ``grants``, after the grant bookkeeping it uses (its functions)."""
    files = resources.files("app.ratelimit").joinpath("lua")
    text = files.joinpath(f"{name}.lua").read_text()
    return files.joinpath("quota_grants.lua").read_text() + text if grants else text
