"""Grouping a claimed batch for bulk: prospects whose pending values are exactly the same
go in one call (pure: no Redis, no HTTP)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from app.store.prospects import Claimed, encode


def group(
    claimed: Sequence[Claimed], *, min_group: int, ids_per_call: int
) -> tuple[list[tuple[dict[str, Any], list[Claimed]]], list[Claimed]]:
    """Split a claimed batch: (field values, prospects) per bulk call, and the rest for PATCH.
    Prospects are in one call only when their pending values are exactly the call's."""
    by_values: dict[str, list[Claimed]] = defaultdict(list)
    for c in claimed:
        by_values[encode(c.fields)].append(c)
    calls: list[tuple[dict[str, Any], list[Claimed]]] = []
    rest: list[Claimed] = []
    for members in by_values.values():
        if len(members) < min_group:
            rest += members
            continue
        for start in range(0, len(members), ids_per_call):
            part = members[start : start + ids_per_call]
            if len(part) >= min_group:
                calls.append((dict(part[0].fields), part))
            else:
                rest += part
    return calls, rest


def mostly_one_group(claimed: Sequence[Claimed]) -> bool:
    """Whether a quarter or more of a claim shares one set of values (a backfill's shape)."""
    counts = Counter(encode(c.fields) for c in claimed)
    return bool(counts) and counts.most_common(1)[0][1] * 4 >= len(claimed)
