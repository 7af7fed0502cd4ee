"""Mapping IDs that come with the data: a destination with ``mapping_ids: "data"``.

Each membership carries ``mappingId`` (AEP's Mapping ID, the audience alias). Before a batch
is validated, its (audience, mapping ID) pairs are learned under the rules of
``app/store/lua/audience_learn.lua`` and the batch is evaluated against the resulting table,
so the rest of ingestion is the same as for a configured schedule. A membership whose
mapping ID is invalid or held by another audience is left out of its profile with the reason
(``audiences_rejected`` in the answer); its profile's other audiences go ahead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.config.destinations import Destination
from app.core.keys import Keys
from app.core.operations import Op
from app.ingest.profiles import ProfileResult
from app.ingest.report import Batch
from app.outreach import fields as outreach_fields
from app.store.audience_map import Learned, learn_op

#: Destination-level counters (totals and hourly hashes, app/store/counters.py).
MAPPING_IDS_INVALID = "mapping_ids_invalid"
MAPPING_CONFLICTS = "mapping_conflicts"
MAPPING_CHANGES = "mapping_changes"
_MAX_DIGITS = 3


@dataclass(frozen=True, slots=True)
class _Member:
    index: int  # position of the profile in the batch
    namespace: str
    audience: str
    mapping_id: int | None  # None: no mappingId sent
    problem: str | None  # the mappingId sent is not usable


@dataclass
class Plan:
    """The memberships of a batch that name audiences, and what to ask the store."""

    members: list[_Member] = field(default_factory=list)
    proposals: list[tuple[str, int]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)


@dataclass
class Resolution:
    """A batch ready for ``evaluate_batch``, and what it must add to the report."""

    destination: Destination
    profiles: list[Any]
    #: Profile index -> [(audience, reason)] of the memberships left out.
    rejected: dict[int, list[tuple[str, str]]]
    counts: Counter[str]


def parse_mapping_id(value: object) -> int | None:
    """A mapping ID from the data: an integer or decimal string (AEP's alias), 1 to 150."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        if len(value.strip()) > _MAX_DIGITS:
            return None
        n = int(value.strip())
    else:
        return None
    return n if outreach_fields.CUSTOM_MIN <= n <= outreach_fields.CUSTOM_MAX else None


def _invalid(value: object) -> str:
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
    lo, hi = outreach_fields.CUSTOM_MIN, outreach_fields.CUSTOM_MAX
    return f"{shown} is not a mapping ID (an integer from {lo} to {hi})"


def plan(profiles: Sequence[Any], destination: Destination) -> Plan:
    """Every membership naming an audience, the pairs to learn and the audiences to look up."""
    out = Plan()
    attribute_fields = set(destination.attributes.values())
    seen_pairs: set[tuple[str, int]] = set()
    seen_lookups: set[str] = set()
    for index, raw in enumerate(profiles):
        segments = raw.get("segmentMembership") if isinstance(raw, dict) else None
        for namespace, audiences in (segments or {}).items() if isinstance(segments, dict) else ():
            if not isinstance(audiences, dict):
                continue
            for audience, membership in audiences.items():
                if not isinstance(membership, dict):
                    continue
                member = _member(index, namespace, audience, membership, attribute_fields)
                out.members.append(member)
                if member.problem is not None:
                    continue
                if member.mapping_id is None:
                    if audience not in seen_lookups:
                        seen_lookups.add(audience)
                        out.lookups.append(audience)
                elif (pair := (audience, member.mapping_id)) not in seen_pairs:
                    seen_pairs.add(pair)
                    out.proposals.append(pair)
    return out


def _member(
    index: int, namespace: str, audience: str, membership: dict[str, Any], taken: set[str]
) -> _Member:
    if "mappingId" not in membership or membership["mappingId"] is None:
        return _Member(index, namespace, audience, None, None)
    raw = membership["mappingId"]
    n = parse_mapping_id(raw)
    if n is None:
        return _Member(index, namespace, audience, None, _invalid(raw))
    field_name = outreach_fields.custom_field(n)
    if field_name in taken:
        return _Member(index, namespace, audience, n, f"{field_name} is an attribute's target")
    return _Member(index, namespace, audience, n, None)


def resolve(profiles: list[Any], destination: Destination, p: Plan, learned: Learned) -> Resolution:
    """Leave out the memberships the store refused, and evaluate against the learned table."""
    decision = dict(zip(p.proposals, learned.decisions, strict=True))
    counts: Counter[str] = Counter()
    rejected: dict[int, list[tuple[str, str]]] = {}
    for d in learned.decisions:
        counts[MAPPING_CHANGES] += d.verdict == "changed"
    for m in p.members:
        reason = m.problem
        if reason is None and m.mapping_id is not None:
            d = decision[(m.audience, m.mapping_id)]
            if d.verdict == "conflict":
                counts[MAPPING_CONFLICTS] += 1
                reason = f"mapping ID {m.mapping_id} is held by audience {d.other}"
        elif reason is not None:
            counts[MAPPING_IDS_INVALID] += 1
        if reason is not None:
            where = f"segmentMembership.{m.namespace}.{m.audience}.mappingId"
            rejected.setdefault(m.index, []).append((m.audience, f"{where}: {reason}"))
    out = list(profiles)
    for index, problems in rejected.items():
        # The audience is left out of this profile under every namespace it appears in.
        out[index] = _without(out[index], {a for a, _ in problems})
    dest = destination.model_copy(update={"audiences": learned.table})
    return Resolution(dest, out, rejected, counts)


def apply(res: Resolution, batch: Batch) -> None:
    """Add the left-out memberships to ``batch``'s report; a profile left with nothing to
    change because of them is rejected (with their reasons) rather than accepted."""
    report = batch.report
    report.audiences.update(res.counts)
    for index, problems in res.rejected.items():
        result = batch.results[index]
        report.audience_problems[result.index] = problems
        remaining = res.profiles[index].get("segmentMembership") or {}
        if result.outcome == "accepted" and not result.changes and not any(remaining.values()):
            reason = "; ".join(reason for _, reason in problems)
            batch.results[index] = ProfileResult(result.index, "rejected", reason, (), (), 0)
            report.accepted -= 1
            report.rejected += 1
            report.problems.append(batch.results[index])


def _without(raw: dict[str, Any], drop: set[str]) -> dict[str, Any]:
    """A shallow copy of ``raw`` without the audiences in ``drop``: the input is not changed."""
    segments = {
        ns: {a: m for a, m in audiences.items() if a not in drop}
        if isinstance(audiences, dict)
        else audiences
        for ns, audiences in raw["segmentMembership"].items()
    }
    return {**raw, "segmentMembership": segments}


def learn_batch_op(
    keys: Keys, destination: Destination, profiles: list[Any], *, now_ms: int
) -> Op[Resolution]:
    """Learn a batch's mapping IDs (one script call) and resolve the batch against them."""
    p = plan(profiles, destination)
    learned = yield from learn_op(keys, destination.id, p.proposals, p.lookups, now_ms=now_ms)
    return resolve(profiles, destination, p, learned)
