"""What operators read: backlog, dataflow counters and quota per destination."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis.asyncio as aioredis

from app.ratelimit import QuotaGate, gate_for
from app.registry import Registry
from app.settings import Settings
from app.store import ProspectStore


async def destination_status(
    dest_id: str, *, store: ProspectStore, registry: Registry, gate: QuotaGate
) -> dict[str, Any] | None:
    """One destination's backlog, counters and its Outreach user's budget (None: unknown)."""
    dest = await registry.destination(dest_id)
    if dest is None:
        return None
    conn = await registry.connection(dest.connection)
    pending, in_flight = await store.backlog(dest_id)
    doc: dict[str, Any] = {
        "destination": dest_id,
        "enabled": dest.enabled,
        "pending": pending,
        "in_flight": in_flight,
        "counters": await store.counters(dest_id),
        "invalid_mapping_ids": sorted(await store.invalid_mappings(dest_id)),
    }
    if conn is not None:
        q = await gate.state(conn.user, limit=conn.rate_limit)
        doc["quota"] = {"user": conn.user, **dataclasses.asdict(q)}
    return doc


async def collect_status(settings: Settings, only: str | None = None) -> list[dict[str, Any]]:
    client = aioredis.from_url(str(settings.redis_url))
    try:
        store = ProspectStore(client, settings.keys)
        registry = Registry(client, settings.keys)
        gate = gate_for(client, settings)
        ids = [only] if only else await registry.destination_ids()
        docs = [await destination_status(d, store=store, registry=registry, gate=gate) for d in ids]
        return [d for d in docs if d is not None]
    finally:
        await client.aclose()


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for d in rows:
        c = d["counters"]
        lines.append(
            f"{d['destination']}: pending={d['pending']} in_flight={d['in_flight']} "
            f"received={c.get('profiles_received', 0)} accepted={c.get('profiles_accepted', 0)} "
            f"excluded={c.get('profiles_excluded', 0)} rejected={c.get('profiles_rejected', 0)} "
            f"requests={c.get('drain_requests', 0)} delivered={c.get('drain_delivered', 0)} "
            f"failed={c.get('prospects_failed', 0)} noop={c.get('prospects_noop', 0)}"
        )
        q = d.get("quota")
        if q:
            paused = q.get("paused_until_s")
            until = (
                f" paused until {time.strftime('%H:%M:%S', time.gmtime(paused))}Z" if paused else ""
            )
            server = q.get("server_remaining")
            told = f" outreach_remaining={server}" if server is not None else ""
            lines.append(
                f"  quota {q['user']}: used={q['used']} remaining={q['remaining']}{told}{until}"
            )
    return "\n".join(lines) or "no destinations configured"


async def render_status(settings: Settings, only: str | None, *, as_json: bool) -> str:
    rows = await collect_status(settings, only)
    return json.dumps(rows, indent=2, default=str) if as_json else _table(rows)
