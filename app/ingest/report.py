"""What an ingested batch amounts to: its report (the answer's counts, the counters to add)
and the batch handed from evaluation to the store (``app/ingest/batch.py``) and to the
mapping IDs learned from the data (``app/ingest/mapping_ids.py``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.ingest.profiles import ProfileResult
from app.outreach import fields as outreach_fields
from app.store.counters import (
    ATTRIBUTES_REJECTED,
    ATTRIBUTES_UNMAPPED,
    AUDIENCES_IGNORED,
    EXCLUDED_BY,
    PROFILES_ACCEPTED,
    PROFILES_EXCLUDED,
    PROFILES_RECEIVED,
    PROFILES_REJECTED,
    UNMAPPED_BY,
    audience_metric,
)
from app.store.prospects import Change


@dataclass
class IngestReport:
    accepted: int = 0
    excluded: int = 0
    rejected: int = 0
    ignored_audiences: int = 0
    fields_applied: int = 0
    fields_stale: int = 0
    excluded_reasons: Counter[str] = field(default_factory=Counter)
    problems: list[ProfileResult] = field(default_factory=list)
    #: Per-audience counts by metric name (``m7:received:realized``, app/store/counters.py).
    audiences: Counter[str] = field(default_factory=Counter)
    #: Profile index -> [(audience, reason)] left out of it (mapping IDs from the data).
    audience_problems: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    #: Attributes left out of their profiles (a shape or value that cannot be written).
    attributes_rejected: int = 0
    #: Per attribute no mapping of the destination reads: profiles that carried a value.
    unmapped_attributes: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return self.accepted + self.excluded + self.rejected

    def add(self, other: IngestReport) -> None:
        for name in (
            "accepted",
            "excluded",
            "rejected",
            "ignored_audiences",
            "attributes_rejected",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.fields_applied += other.fields_applied
        self.fields_stale += other.fields_stale
        self.excluded_reasons.update(other.excluded_reasons)
        self.problems.extend(other.problems)
        self.audiences.update(other.audiences)
        self.audience_problems.update(other.audience_problems)
        self.unmapped_attributes.update(other.unmapped_attributes)

    def count(self, res: ProfileResult) -> None:
        """Add what one profile left out: ignored audiences and attributes."""
        self.ignored_audiences += res.ignored_audiences
        self.attributes_rejected += len(res.attributes_rejected)
        self.unmapped_attributes.update(res.unmapped_attributes)

    def as_dict(self, *, results: list[ProfileResult] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "received": self.received,
            "accepted": self.accepted,
            "excluded": self.excluded,
            "rejected": self.rejected,
            "ignored_audiences": self.ignored_audiences,
            "fields_applied": self.fields_applied,
            "fields_stale": self.fields_stale,
            "attributes_rejected": self.attributes_rejected,
            "unmapped_attributes": dict(sorted(self.unmapped_attributes.items())),
        }
        if results is not None:
            doc["profiles"] = [
                {
                    "index": r.index,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "prospects": list(r.prospect_ids),
                }
                for r in results
            ]
            for entry, r in zip(doc["profiles"], results, strict=True):
                if left_out := self.audience_problems.get(entry["index"]):
                    entry["audiences_rejected"] = [
                        {"audience": a, "reason": reason} for a, reason in left_out
                    ]
                if r.attributes_rejected:
                    entry["attributes_rejected"] = [
                        {"attribute": a, "reason": reason} for a, reason in r.attributes_rejected
                    ]
        return doc

    def counters(self) -> dict[str, int]:
        out = {
            PROFILES_RECEIVED: self.received,
            PROFILES_ACCEPTED: self.accepted,
            PROFILES_EXCLUDED: self.excluded,
            PROFILES_REJECTED: self.rejected,
            AUDIENCES_IGNORED: self.ignored_audiences,
            ATTRIBUTES_REJECTED: self.attributes_rejected,
            ATTRIBUTES_UNMAPPED: self.unmapped_attributes.total(),
        }
        for name, n in self.unmapped_attributes.items():
            key = UNMAPPED_BY + _attribute_key(name)
            out[key] = out.get(key, 0) + n
        for reason, n in self.excluded_reasons.items():
            key = EXCLUDED_BY + _reason_key(reason)
            out[key] = out.get(key, 0) + n
        out.update(self.audiences)
        return out


def _attribute_key(name: str) -> str:
    # Names come from producers: counted by name only when Outreach has such an attribute
    # (AEP's profileFields are those), so a producer cannot grow the counters without bound.
    return name if name in outreach_fields.FIELDS else "other"


def _reason_key(reason: str) -> str:
    # "OutreachId 'abc' is not a positive integer" -> one counter, not one per bad value.
    return "no_identity" if reason.startswith("no ") else "bad_identity"


def count_audiences(counts: Counter[str], res: ProfileResult) -> None:
    """Per mapped audience a profile names: received by status, and excluded or rejected."""
    for mapping_id, status in res.audiences:
        counts[audience_metric(mapping_id, "received", status)] += 1
        if res.outcome == "excluded":
            counts[audience_metric(mapping_id, "excluded", _reason_key(res.reason or ""))] += 1
        elif res.outcome == "rejected":
            counts[audience_metric(mapping_id, "rejected")] += 1


@dataclass
class Batch:
    report: IngestReport
    results: list[ProfileResult]
    changes: dict[int, list[Change]]
    #: Changes of profiles known by email only, per normalised email (resolved later).
    email_changes: dict[str, list[Change]] = field(default_factory=dict)
