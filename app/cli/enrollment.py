"""``outreach-sync enrollment``: sequence enrollment per destination and audience, and lifting
a pause once its cause (a scope, a mailbox) is fixed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.ops.status_doc import DestinationStatus


def cmd_status(ns: argparse.Namespace) -> int:
    import asyncio

    from app.core.settings import get_settings
    from app.ops.status import collect_status

    docs = asyncio.run(collect_status(get_settings(), ns.destination))
    if ns.destination and not docs:
        print(f"error: unknown destination {ns.destination!r}", file=sys.stderr)
        return 2
    shown = [d for d in docs if d.enrollment.enabled or d.enrollment.audiences]
    if ns.json:
        out = [{"destination": d.destination, **d.enrollment.model_dump()} for d in shown]
        print(json.dumps(out, indent=2))
        return 0
    print("\n".join(_lines(d) for d in shown) or "no destination enrolls into sequences")
    return 0


def _lines(doc: DestinationStatus) -> str:
    e = doc.enrollment
    mode = " (dry run)" if e.dry_run else ""
    head = f"{doc.destination}{mode}: {e.waiting} waiting"
    if e.paused_until_ms:
        until = time.strftime("%H:%M:%S", time.gmtime(e.paused_until_ms / 1000))
        head += f"; PAUSED until {until} UTC: {e.paused_reason}"
    rows = [head]
    for row in e.audiences:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(row.counts.items())) or "nothing yet"
        rows.append(
            f"  {row.audience} -> sequence {row.sequence} (on exit: {row.on_exit}): {counts}"
        )
    return "\n".join(rows)


def cmd_resume(ns: argparse.Namespace) -> int:
    import asyncio

    from app.core.redis_client import async_client
    from app.core.settings import get_settings
    from app.enroll import EnrollStore

    settings = get_settings()

    async def resume() -> int:
        client = async_client(settings)
        try:
            store = EnrollStore(client, settings.keys)
            return await store.resume(ns.destination, now_ms=int(time.time() * 1000))
        finally:
            await client.aclose()

    moved = asyncio.run(resume())
    print(f"enrollment of {ns.destination} resumed: {moved} waiting enrollment(s) due now")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``enrollment`` command and its actions."""
    p = sub.add_parser("enrollment", help="sequence enrollment: figures per audience, resume")
    acts = p.add_subparsers(dest="action", required=True)
    st = acts.add_parser("status", help="enrolled, already, exits, refusals by reason, waiting")
    st.add_argument("destination", nargs="?")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    rs = acts.add_parser("resume", help="lift a pause (scope or mailbox fixed): send now")
    rs.add_argument("destination")
    rs.set_defaults(func=cmd_resume)
