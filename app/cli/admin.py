"""``outreach-sync destinations ...`` and ``outreach-sync keys ...``: the admin CLI.

It edits Redis directly with the same code as the admin API (``app.admin.destinations``), so
both validate alike and running workers pick changes up within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tomllib
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from app.core.settings import Settings, get_settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.admin.destinations import DestinationAdmin
    from app.admin.producer_keys import ProducerKey, ProducerKeys
    from app.config.destinations import Destination

# The heavy modules are imported when a command runs: building the parser stays cheap for
# every other command of the CLI.
T = TypeVar("T")


class _Refused(Exception):
    """A message for stderr and the exit code to end with."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _run(work: Callable[[aioredis.Redis, Settings], Awaitable[T]]) -> T:
    from app.core.redis_client import async_client

    async def go() -> T:
        settings = get_settings()
        client = async_client(settings)
        try:
            return await work(client, settings)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _admin_call(call: Callable[[DestinationAdmin], Awaitable[T]]) -> T:
    from app.admin.destinations import Conflict, DestinationAdmin, Invalid, NotFound
    from app.api.jsonapi import pointer
    from app.core.errors import UnreadableRecord

    async def work(client: aioredis.Redis, settings: Settings) -> T:
        return await call(DestinationAdmin(client, settings.keys))

    try:
        return _run(work)
    except Invalid as exc:
        lines = "".join(f"\n  {pointer(loc) or '/'}: {msg}" for loc, msg in exc.problems)
        raise _Refused(f"invalid destination ({len(exc.problems)} problem(s)):{lines}") from None
    except NotFound as exc:
        raise _Refused(str(exc)) from None
    except Conflict as exc:
        raise _Refused(str(exc), code=1) from None
    except UnreadableRecord as exc:
        hint = "replace it (destinations update ID FILE) or delete it (destinations delete ID)"
        raise _Refused(f"{exc}; {hint}", code=1) from None


def _read_document(name: str) -> Any:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _Refused(f"cannot read {name}: {reason}") from None
    try:
        return tomllib.loads(text) if name.endswith(".toml") else json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise _Refused(f"{name} is not valid JSON at {where}: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _Refused(f"{name} is not valid TOML: {exc}") from None


def _print_destination(dest: Destination) -> None:
    print(json.dumps(dest.model_dump(mode="json"), indent=2))


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


# destinations ---------------------------------------------------------------------------


def cmd_list(ns: argparse.Namespace) -> int:
    dests, broken = _admin_call(lambda a: a.catalog())
    if ns.json:
        docs = [d.model_dump(mode="json") for d in dests]
        docs += [{"id": b.id, "broken": b.reason} for b in broken]
        print(json.dumps(docs, indent=2))
    elif not dests and not broken:
        print("no destinations")
    else:
        rows = [
            [
                d.id,
                "yes" if d.enabled else "no",
                d.connection,
                str(len(d.audiences)),
                str(len(d.attributes)),
                d.name,
            ]
            for d in dests
        ]
        rows += [[b.id, "BROKEN", "-", "-", "-", f"record unreadable: {b.reason}"] for b in broken]
        print(_table(["ID", "ENABLED", "CONNECTION", "AUDIENCES", "ATTRIBUTES", "NAME"], rows))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    _print_destination(_admin_call(lambda a: a.get(ns.id)))
    return 0


def cmd_create(ns: argparse.Namespace) -> int:
    data = _read_document(ns.file)
    dest = _admin_call(lambda a: a.create(data))
    print(f"created destination {dest.id}", file=sys.stderr)
    _print_destination(dest)
    return 0


def cmd_update(ns: argparse.Namespace) -> int:
    data = _read_document(ns.file)
    if ns.merge:
        dest = _admin_call(lambda a: a.patch(ns.id, data))
    else:
        dest = _admin_call(lambda a: a.replace(ns.id, data))
    print(f"updated destination {dest.id}", file=sys.stderr)
    _print_destination(dest)
    return 0


def _set_enabled(ns: argparse.Namespace, *, enabled: bool) -> int:
    dest = _admin_call(lambda a: a.patch(ns.id, {"enabled": enabled}))
    print(f"destination {dest.id} {'enabled' if dest.enabled else 'disabled'}")
    return 0


def cmd_delete(ns: argparse.Namespace) -> int:
    gone = _admin_call(lambda a: a.delete(ns.id, force=ns.force))
    extra = ""
    if ns.force:
        extra = (
            f"; discarded {gone.pending} pending prospect(s), {gone.in_flight} in flight, "
            f"{gone.failures} failure record(s)"
        )
    print(f"deleted destination {ns.id}{extra}")
    return 0


# keys -----------------------------------------------------------------------------------


def _key_store(client: aioredis.Redis, settings: Settings) -> ProducerKeys:
    from app.admin.producer_keys import ProducerKeys

    return ProducerKeys(client, settings.keys)


def cmd_keys_create(ns: argparse.Namespace) -> int:
    scope: list[str] | None = None if ns.all_destinations else ns.destination

    from app.store.registry import stored_destination

    async def work(client: aioredis.Redis, settings: Settings) -> tuple[ProducerKey, str]:
        missing = [
            d for d in scope or [] if await stored_destination(client, settings.keys, d) is None
        ]
        if missing:
            raise _Refused(f"no destination {', '.join(map(repr, missing))}")
        try:
            return await _key_store(client, settings).create(ns.name, scope)
        except ValueError as exc:
            raise _Refused(str(exc)) from None

    key, text = _run(work)
    where = "every destination" if key.destinations is None else ", ".join(key.destinations)
    print(
        f"created key {key.key_id} ({key.name}) for {where}. It is shown this once: "
        "store it now (only its SHA-256 digest is kept).",
        file=sys.stderr,
    )
    print(text)
    return 0


def cmd_keys_list(ns: argparse.Namespace) -> int:
    keys, broken = _run(lambda client, s: _key_store(client, s).catalog())
    if ns.json:
        docs: list[dict[str, Any]] = [k.as_dict() for k in keys]
        docs += [{"key_id": b.id, "broken": b.reason} for b in broken]
        print(json.dumps(docs, indent=2))
    elif not keys and not broken:
        print("no producer keys")
    else:
        rows = [
            [
                k.key_id,
                k.name,
                "*" if k.destinations is None else ",".join(k.destinations),
                k.created_at,
                k.revoked_at or "-",
            ]
            for k in keys
        ]
        rows += [[b.id, f"BROKEN: record unreadable ({b.reason})", "-", "-", "-"] for b in broken]
        print(_table(["KEY ID", "NAME", "DESTINATIONS", "CREATED", "REVOKED"], rows))
    return 0


def cmd_keys_revoke(ns: argparse.Namespace) -> int:
    from app.core.errors import UnreadableRecord

    try:
        key = _run(lambda client, s: _key_store(client, s).revoke(ns.key_id))
    except UnreadableRecord as exc:
        raise _Refused(f"{exc}; remove it with: outreach-sync keys delete {ns.key_id}") from None
    if key is None:
        raise _Refused(f"no producer key {ns.key_id!r} (see outreach-sync keys list)")
    print(f"key {key.key_id} ({key.name}) revoked at {key.revoked_at}")
    return 0


def cmd_keys_delete(ns: argparse.Namespace) -> int:
    if not _run(lambda client, s: _key_store(client, s).delete(ns.key_id)):
        raise _Refused(f"no producer key {ns.key_id!r} (see outreach-sync keys list)")
    print(f"key {ns.key_id} deleted")
    return 0


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(ns: argparse.Namespace) -> int:
        try:
            return func(ns)
        except _Refused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.code

    return run


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``destinations`` and ``keys`` subcommands."""
    ds = sub.add_parser("destinations", help="create, change, disable and delete destinations")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    ls = ds_sub.add_parser("list", help="every destination")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_guard(cmd_list))
    show = ds_sub.add_parser("show", help="one destination as JSON")
    show.add_argument("id")
    show.set_defaults(func=_guard(cmd_show))
    create = ds_sub.add_parser("create", help="create from a JSON (or .toml) file ('-': stdin)")
    create.add_argument("file")
    create.set_defaults(func=_guard(cmd_create))
    update = ds_sub.add_parser("update", help="replace a destination from a file ('-': stdin)")
    update.add_argument("id")
    update.add_argument("file")
    update.add_argument(
        "--merge",
        action="store_true",
        help="the file is a JSON Merge Patch: change only its members",
    )
    update.set_defaults(func=_guard(cmd_update))
    for name, enabled in (("enable", True), ("disable", False)):
        sp = ds_sub.add_parser(name, help=f"{name} sending (accepted changes are kept either way)")
        sp.add_argument("id")
        sp.set_defaults(func=_guard(partial(_set_enabled, enabled=enabled)))
    delete = ds_sub.add_parser(
        "delete", help="delete a destination (refused while it has a backlog)"
    )
    delete.add_argument("id")
    delete.add_argument(
        "--force", action="store_true", help="discard pending changes and failure records"
    )
    delete.set_defaults(func=_guard(cmd_delete))

    ks = sub.add_parser("keys", help="producers' API keys")
    ks_sub = ks.add_subparsers(dest="action", required=True)
    kc = ks_sub.add_parser("create", help="a new key (printed once)")
    kc.add_argument("--name", required=True, help="who uses it, e.g. the producer's name")
    scope = kc.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--destination", "-d", action="append", metavar="ID", help="a destination it may use"
    )
    scope.add_argument("--all-destinations", action="store_true")
    kc.set_defaults(func=_guard(cmd_keys_create))
    kl = ks_sub.add_parser("list", help="every key (never the secrets)")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=_guard(cmd_keys_list))
    kr = ks_sub.add_parser("revoke", help="refuse a key from now on")
    kr.add_argument("key_id")
    kr.set_defaults(func=_guard(cmd_keys_revoke))
    kd = ks_sub.add_parser(
        "delete", help="remove a key's record (one that cannot be read, say); revoke keeps it"
    )
    kd.add_argument("key_id")
    kd.set_defaults(func=_guard(cmd_keys_delete))
