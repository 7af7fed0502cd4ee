"""``outreach-sync status``: the status of every destination (or one), as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.settings import Settings


def cmd_status(ns: argparse.Namespace) -> int:
    import asyncio

    from app.cli.status_table import render_table
    from app.core.settings import get_settings
    from app.ops.status import BadQuery, collect_status, parse_hours

    settings = get_settings()
    try:
        hours = parse_hours(None if ns.hours is None else str(ns.hours), keys=settings.keys)
    except BadQuery as exc:
        print(f"error: --hours: {exc}", file=sys.stderr)
        return 2
    docs = asyncio.run(collect_status(settings, ns.destination, hours=hours))
    if ns.destination and not docs:
        print(f"error: unknown destination {ns.destination!r}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps([d.as_json() for d in docs], indent=2))
        return 0
    print(render_table(docs))
    if not ns.destination:
        print(_workers_line(settings))
    return 0


def _workers_line(settings: Settings) -> str:
    """Which workers' dispatchers beat lately: a backlog with none alive goes nowhere."""
    from app.core.redis_client import sync_client
    from app.delivery.dispatcher import live_workers

    client = sync_client(settings)
    try:
        alive = live_workers(client, settings.keys)
    finally:
        client.close()
    if not alive:
        return "workers: none alive (start some: outreach-sync worker)"
    return f"workers: {len(alive)} alive ({', '.join(alive)})"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    st = sub.add_parser(
        "status", help="dataflow metrics, backlog, lag, connection and quota per destination"
    )
    st.add_argument("destination", nargs="?")
    st.add_argument("--json", action="store_true", help="the status documents as JSON")
    st.add_argument(
        "--hours", type=int, metavar="N", help="the window summed in 'last Nh' (default 24)"
    )
    st.set_defaults(func=cmd_status)
