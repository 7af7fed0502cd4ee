"""``outreach-sync connections ...``: connect Outreach users without a browser, and look.

Tokens are read from environment variables or stdin (never from the command line, where
``ps`` and shell history would keep them) and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.core.settings import get_settings
from app.enroll.store import connection_enrolls
from app.store.bulk_state import connection_uses_bulk

if TYPE_CHECKING:
    from app.connections.records import ConnectionRecord, ConnectionStoreSync
    from app.delivery.account_lines import CheckReport


def _store() -> ConnectionStoreSync:
    from app.connections.crypto import cipher_for
    from app.connections.records import ConnectionStoreSync
    from app.core.redis_client import sync_client

    s = get_settings()
    return ConnectionStoreSync(sync_client(s), s.keys, cipher_for(s))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _env_token(var: str, what: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise ValueError(f"{what}: environment variable {var} is not set or empty")
    return value


def _expires_at(ns: argparse.Namespace) -> float | None:
    if ns.expires_in is not None:
        if ns.expires_in <= 0:
            raise ValueError("--expires-in must be a positive number of seconds")
        return time.time() + float(ns.expires_in)
    if ns.expires_at is not None:
        try:
            when = datetime.fromisoformat(ns.expires_at.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--expires-at {ns.expires_at!r} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise ValueError("--expires-at needs a time zone (e.g. 2026-01-01T12:00:00Z)")
        return when.timestamp()
    return None


def cmd_add(ns: argparse.Namespace) -> int:
    from app.config.destinations import Connection, describe_error, format_loc

    try:
        if ns.access_token_stdin:
            access = sys.stdin.readline().strip()
            if not access:
                raise ValueError("--access-token-stdin: nothing was read from stdin")
        else:
            access = _env_token(ns.access_token_env, "--access-token-env")
        refresh = (
            _env_token(ns.refresh_token_env, "--refresh-token-env")
            if ns.refresh_token_env
            else None
        )
        expires_at = _expires_at(ns)
    except ValueError as exc:
        return _fail(str(exc))
    fields: dict[str, Any] = {"id": ns.id, "user": ns.user, "rate_limit": ns.rate_limit}
    if ns.reserve_share is not None:
        fields["reserve_share"] = ns.reserve_share
    try:
        meta = Connection.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = [describe_error(e) for e in exc.errors()]
        return _fail("; ".join(f"{format_loc(loc) or 'connection'}: {m}" for loc, m in problems))
    # Options not given keep the stored values (read inside the compare-and-set).
    kept = {"rate_limit": ns.rate_limit is None, "reserve_share": ns.reserve_share is None}

    def metadata(old: ConnectionRecord | None) -> Connection:
        if old is None:
            return meta
        stored = old.metadata()
        return meta.model_copy(
            update={name: getattr(stored, name) for name, keep in kept.items() if keep}
        )

    store = _store()
    rec = store.install(
        meta,
        access_token=access,
        refresh_token=refresh,
        expires_at=expires_at,
        source="cli",
        metadata=metadata,
    )
    dests = store.destinations(ns.id)
    print(f"connection {rec.id} stored (user {rec.user}, token generation {rec.generation})")
    if dests:
        print(f"destinations resumed: {', '.join(dests)}")
    return 0


def _line(rec: ConnectionRecord) -> str:
    doc = rec.public()
    expiry = doc["expires_at"] or "unknown"
    reason = f"  ({doc['reason']})" if doc["reason"] else ""
    refresh = "yes" if doc["has_refresh_token"] else "no"
    return (
        f"{rec.id}: user={rec.user} state={rec.state} expires={expiry} "
        f"refreshable={refresh} rate_limit={rec.rate_limit}{reason}"
    )


def cmd_list(ns: argparse.Namespace) -> int:
    store = _store()
    records, broken = store.all(), store.broken()
    if ns.json:
        docs = [r.public() for r in records]
        docs += [{"id": b.id, "broken": b.reason} for b in broken]
        print(json.dumps(docs, indent=2))
    else:
        lines = [_line(r) for r in records]
        lines += [f"{b.id}: BROKEN: stored record unreadable ({b.reason})" for b in broken]
        print("\n".join(lines) or "no connections")
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    from app.core.errors import UnreadableRecord

    store = _store()
    try:
        rec = store.get(ns.id)
    except UnreadableRecord as exc:
        return _fail(f"{exc}; remove it, or add it again (connections add, config load)")
    if rec is None:
        return _fail(f"no connection {ns.id!r}")
    print(json.dumps({**rec.public(), "destinations": store.destinations(ns.id)}, indent=2))
    return 0


def cmd_remove(ns: argparse.Namespace) -> int:
    store = _store()
    if not store.exists(ns.id):
        return _fail(f"no connection {ns.id!r}")
    dests = store.destinations(ns.id)
    if dests and not ns.force:
        return _fail(
            f"destinations {', '.join(dests)} use connection {ns.id!r}; point them at another "
            "connection first, or --force (they stop sending; their changes wait)"
        )
    store.delete(ns.id)
    print(f"connection {ns.id} removed")
    return 0


def cmd_authorize(ns: argparse.Namespace) -> int:
    from app.connections.oauth import authorize_url, connection_metadata, create_state
    from app.core.redis_client import async_client

    # The same check as /oauth/start: a bad id or user would only fail after the code
    # exchange, with the authorization spent.
    checked = connection_metadata(ns.id, ns.user or None)
    if isinstance(checked, str):
        return _fail(checked)
    s = get_settings()
    if not s.outreach_client_id or s.outreach_client_secret is None:
        return _fail("set OUTREACH_CLIENT_ID and OUTREACH_CLIENT_SECRET (the Outreach OAuth app)")

    async def make() -> str:
        client = async_client(s)
        try:
            state = await create_state(
                client, s.keys, connection=ns.id, user=ns.user, ttl_s=s.oauth_state_ttl_s
            )
            bulk = await connection_uses_bulk(client, s.keys, ns.id)
            enrolls = await connection_enrolls(client, s.keys, ns.id)
        finally:
            await client.aclose()
        return authorize_url(s, state, bulk=bulk, sequences=enrolls)

    print(asyncio.run(make()))
    print(
        f"open it in a browser within {s.oauth_state_ttl_s} s; Outreach sends the user back to "
        "the API's /oauth/callback, which stores the connection",
        file=sys.stderr,
    )
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    import aiohttp

    from app.core.redis_client import async_client
    from app.delivery.account_check import AccountCheck

    if ns.write and ns.prospect is None:
        return _fail("--write needs --prospect ID: the one prospect the bulk call may write")
    s = get_settings()

    async def run() -> CheckReport:
        client = async_client(s)
        try:
            async with aiohttp.ClientSession() as session:
                check = AccountCheck(client, session, s)
                try:
                    return await check.run(ns.id, prospect=ns.prospect if ns.write else None)
                finally:
                    await check.aclose()
        finally:
            await client.aclose()

    report = asyncio.run(run())
    if ns.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(_check_table(report))
    return 1 if report.failed else 0


def _check_table(report: CheckReport) -> str:
    rows = [(x.status, x.check, x.detail, x.action) for x in report.lines]
    width = max((len(r[1]) for r in rows), default=5)
    out = [f"connection {report.connection}: {report.requests} request(s) to Outreach"]
    for status, check, detail, action in rows:
        out.append(f"{status:<4}  {check:<{width}}  {detail}")
        if action:
            out.append(f"{'':<4}  {'':<{width}}  -> {action}")
    verdict = "FAILED: fix the lines marked fail" if report.failed else "passed"
    return "\n".join([*out, verdict])


def cmd_reencrypt(_: argparse.Namespace) -> int:
    print(f"re-encrypted {_store().reencrypt()} connection(s) with the first key")
    return 0


def cmd_new_key(_: argparse.Namespace) -> int:
    from app.connections.crypto import new_key

    print(new_key())
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``connections`` command and its actions."""
    p = sub.add_parser(
        "connections", help="Outreach connections: add, list, authorize, check, remove"
    )
    acts = p.add_subparsers(dest="action", required=True)

    add = acts.add_parser("add", help="store a connection from tokens (no browser)")
    add.add_argument("id")
    add.add_argument("--user", required=True, help="the Outreach user the tokens belong to")
    add.add_argument("--rate-limit", help="e.g. 10000/hour (default: kept, else 10000/hour)")
    add.add_argument("--reserve-share", type=float, help="0-0.5 of the quota left unspent")
    token = add.add_mutually_exclusive_group(required=True)
    token.add_argument("--access-token-env", metavar="VAR", help="read the token from $VAR")
    token.add_argument("--access-token-stdin", action="store_true", help="read it from stdin")
    add.add_argument("--refresh-token-env", metavar="VAR", help="read the refresh token from $VAR")
    expiry = add.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=float, metavar="S", help="seconds from now")
    expiry.add_argument("--expires-at", metavar="ISO", help="e.g. 2026-01-01T12:00:00Z")
    add.set_defaults(func=cmd_add)

    ls = acts.add_parser("list", help="every connection, its state and expiry (no tokens)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    show = acts.add_parser("show", help="one connection (no tokens)")
    show.add_argument("id")
    show.set_defaults(func=cmd_show)
    rm = acts.add_parser("remove", help="delete a connection")
    rm.add_argument("id")
    rm.add_argument("--force", action="store_true", help="even while destinations use it")
    rm.set_defaults(func=cmd_remove)
    auth = acts.add_parser("authorize", help="print the Outreach authorize URL for a connection")
    auth.add_argument("id")
    auth.add_argument("--user", help="the Outreach user label (default: kept, else the id)")
    auth.set_defaults(func=cmd_authorize)
    chk = acts.add_parser(
        "check", help="confirm the token, scopes, quota headers and custom fields on Outreach"
    )
    chk.add_argument("id")
    chk.add_argument("--json", action="store_true")
    chk.add_argument(
        "--write", action="store_true", help="also measure one bulk call (needs --prospect)"
    )
    chk.add_argument(
        "--prospect", type=int, metavar="ID", help="the prospect the bulk call writes (unchanged)"
    )
    chk.set_defaults(func=cmd_check)
    re_ = acts.add_parser("reencrypt", help="rewrite every token with the first key")
    re_.set_defaults(func=cmd_reencrypt)
    key = acts.add_parser("new-key", help="print a new random TOKEN_ENCRYPTION_KEY")
    key.set_defaults(func=cmd_new_key)
