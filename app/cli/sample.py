"""Deterministic sample traffic in the platform's profile format, with its expected outcome.

Used by the demo (``make run``), the end-to-end tests and the benchmarks. The generator keeps
its own ground truth (the newest version of every field, ties to the later event), computed
independently of the service's merge code, so tests can compare Outreach's final state to it.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATUSES = ("realized", "existing", "exited")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
TITLES = ("CTO", "Engineer", "Director", "VP Sales", "Analyst")
COMPANIES = ("Analytical Engines", "Bell Labs", "Mathematisch Centrum", "Stanford", "IBM")
#: 2026-11-01T00:00:00Z: the sample's clock starts here and moves a few seconds per event.
EPOCH_MS = 1_793_491_200_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Sample:
    profiles: list[dict[str, Any]]
    #: (event order, prospect, field, version ms, value) of every field change sent.
    notes: list[tuple[int, int, str, int, Any]] = field(default_factory=list)
    excluded: int = 0

    def expected(self, upto: int | None = None) -> dict[int, dict[str, Any]]:
        """Each prospect's final fields after the first ``upto`` events (default: all):
        per field the newest version wins, ties going to the later event."""
        best: dict[int, dict[str, tuple[int, int, Any]]] = {}
        for order, prospect, name, ts, value in self.notes:
            if upto is not None and order >= upto:
                break
            fields = best.setdefault(prospect, {})
            seen = fields.get(name)
            if seen is None or (ts, order) >= (seen[0], seen[1]):
                fields[name] = (ts, order, value)
        return {p: {f: v for f, (_, _, v) in fs.items()} for p, fs in best.items()}

    def note(self, prospect: int, name: str, ts: int, order: int, value: Any) -> None:
        self.notes.append((order, prospect, name, ts, value))


def generate(
    *,
    events: int,
    prospects: int,
    audiences: dict[str, int],
    unmapped_audiences: Sequence[str] = ("unmapped-audience",),
    attributes: Sequence[str] = ("firstName", "lastName", "title"),
    seed: int = 7,
    first_prospect: int = 1001,
    exclude_share: float = 0.02,
) -> Sample:
    """Profile events over ``prospects`` with repeats, exits, re-entries, out-of-order
    evaluations and attribute updates; ``audiences`` maps audience id -> mapping ID."""
    rng = random.Random(seed)
    sample = Sample([])
    aud_ids = list(audiences)
    status: dict[tuple[int, str], str] = {}
    for i in range(events):
        now = EPOCH_MS + i * 1500
        if rng.random() < exclude_share:
            sample.profiles.append(_excluded(rng, aud_ids[0], now))
            sample.excluded += 1
            continue
        pid = first_prospect + rng.randrange(prospects)
        membership: dict[str, Any] = {}
        for aid in rng.sample(aud_ids, k=rng.randint(1, min(3, len(aud_ids)))):
            prev = status.get((pid, aid))
            new = _next_status(rng, prev)
            # One evaluation in ten arrives late: older than what was already sent.
            ts = now - rng.randint(60_000, 3_600_000) if rng.random() < 0.1 else now
            if ts == now:
                status[(pid, aid)] = new
            membership[aid] = {"status": new, "lastQualificationTime": iso(ts)}
            sample.note(pid, f"custom{audiences[aid]}", ts, i, new)
        if rng.random() < 0.3:
            membership[rng.choice(list(unmapped_audiences))] = {"status": "realized"}
        attrs: dict[str, Any] = {}
        for name in attributes:
            if rng.random() < 0.25:
                value = _attribute(rng, name)
                attrs[name] = {"value": value}
                sample.note(pid, name, now, i, value)
        profile: dict[str, Any] = {
            "identityMap": {"OutreachId": [{"id": str(pid)}]},
            "segmentMembership": {"ups": membership},
            "attributes": attrs,
            "timestamp": iso(now),
        }
        sample.profiles.append(profile)
    return sample


def _next_status(rng: random.Random, prev: str | None) -> str:
    if prev is None or prev == "exited":
        return "realized" if rng.random() < 0.8 else "exited"
    return rng.choice(("existing", "existing", "exited"))


def _attribute(rng: random.Random, name: str) -> str:
    pools = {"firstName": FIRST_NAMES, "lastName": LAST_NAMES, "company": COMPANIES}
    pool = pools.get(name, TITLES)
    return rng.choice(pool)


def _excluded(rng: random.Random, audience: str, now: int) -> dict[str, Any]:
    identity: dict[str, Any] = (
        {} if rng.random() < 0.5 else {"OutreachId": [{"id": "not-a-number"}]}
    )
    return {
        "identityMap": identity,
        "segmentMembership": {"ups": {audience: {"status": "realized"}}},
        "timestamp": iso(now),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m app.cli.sample CONFIG DEST EVENTS PROSPECTS`` writes NDJSON to stdout."""
    from app.config.destinations import load_config

    config_path, dest_id, events, prospects = argv or sys.argv[1:]
    dest = load_config(config_path).destination(dest_id)
    sample = generate(events=int(events), prospects=int(prospects), audiences=dest.audiences)
    for p in sample.profiles:
        sys.stdout.write(json.dumps(p, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
