"""Mapping IDs from the data, as the status document shows them: the learned schedule and,
per audience row, its latest change or conflict (``app/store/audience_map.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from app.config.destinations import Destination
from app.core.keys import Keys
from app.ops.status_doc import MappingIssue
from app.store.audience_map import learned_table, mapping_issues

#: An issue this recent (by its last occurrence) raises an alert; older ones only show.
ALERT_WITHIN_S = 3600


async def learned_view(
    client: aioredis.Redis, keys: Keys, dest: Destination
) -> tuple[Destination, list[MappingIssue]]:
    """``dest`` with its learned audience table (mapping IDs from the data), and its issues."""
    if dest.mapping_ids != "data":
        return dest, []
    table = await learned_table(client, keys, dest.id)
    issues = [MappingIssue(**i) for i in await mapping_issues(client, keys, dest.id)]
    return dest.model_copy(update={"audiences": table}), issues


def describe(issue: MappingIssue) -> str:
    """One line for people: what happened to which audience, and how often."""
    times = f" ({issue.count}x)" if issue.count != 1 else ""
    if issue.kind == "conflict":
        return (
            f"audience {issue.audience} asked for mapping ID {issue.mapping_id}, held by "
            f"audience {issue.held_by}: its memberships are left out{times}"
        )
    return (
        f"audience {issue.audience} moved from mapping ID {issue.previous} to "
        f"{issue.mapping_id}: custom{issue.previous} is no longer written{times}"
    )


def notes(issues: Sequence[MappingIssue]) -> dict[int, str]:
    """Mapping ID -> what its audience row says: the contested mapping ID's row for a
    conflict, the new one's for a change."""
    by_id: dict[int, list[str]] = {}
    for issue in issues:
        by_id.setdefault(issue.mapping_id, []).append(describe(issue))
    return {n: "; ".join(lines) for n, lines in by_id.items()}
