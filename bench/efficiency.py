"""Quota efficiency: a fixed-seed reference workload replayed through the whole pipeline
against the sandbox; PATCH requests against the lower bound and the reference destination's
way (one PATCH per profile evaluation)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from app.cli.sample import Sample, generate
from app.testing.harness import wait_until
from bench.pipeline import DEST, Pipeline, pipeline
from bench.table import Row

SEED = 2026
ATTRIBUTES = {"firstName": "firstName", "lastName": "lastName", "title": "title"}
CHUNK = 5000


@dataclass(frozen=True)
class Replay:
    requests: int
    lower_bound: int
    reference: int
    exact: bool


def workload(*, smoke: bool) -> Sample:
    """>= 200,000 events over >= 20,000 prospects and 24 audiences (smoke: tiny)."""
    audiences = {f"audience-{n:02d}": n for n in range(1, 25)}
    events, prospects = (2_000, 200) if smoke else (200_000, 20_000)
    return generate(
        events=events,
        prospects=prospects,
        audiences=audiences,
        attributes=tuple(ATTRIBUTES),
        seed=SEED,
    )


def replay(sample: Sample, *, streamed: bool, workers: int = 2) -> Replay:
    """``streamed``: workers run while the events arrive at full speed (1 s coalescing
    window); otherwise the events are a backlog the workers find when they start."""
    audiences = {a: n for a, n in _audiences(sample).items()}
    with pipeline(
        sandbox_args=("--quota-limit", "100000000"),
        rate_limit="100000000/hour",
        audiences=audiences,
        attributes=ATTRIBUTES,
        COALESCE_WINDOW_MS="1000" if streamed else "0",
        CLAIM_BATCH="100",
        HTTP_CONCURRENCY="32",
    ) as run:
        if streamed:
            run.start_workers(workers, concurrency=1)
        accepted = _feed(run, sample)
        if not streamed:
            run.start_workers(workers, concurrency=1)
        expected = sample.expected()
        wait_until(
            lambda: run.idle() and len(run.sandbox.prospects()) >= len(expected),
            timeout_s=600,
            what="the replay to be delivered",
            every_s=0.5,
        )
        state = run.sandbox.prospects()
        exact = all(state.get(p) == fields for p, fields in expected.items())
        return Replay(run.sandbox.stats()["patches_ok"], len(expected), accepted, exact)


def _feed(run: Pipeline, sample: Sample) -> int:
    accepted = 0
    for start in range(0, len(sample.profiles), CHUNK):
        batch = run.producer.send(DEST, sample.profiles[start : start + CHUNK], start=start)
        accepted += batch.report.accepted
    return accepted


def _audiences(sample: Sample) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _, _, field, _, _ in sample.notes:
        if field.startswith("custom"):
            n = int(field[6:])
            seen[f"audience-{n:02d}"] = n
    return seen


def run(*, smoke: bool) -> list[Row]:
    t0 = time.monotonic()
    sample = workload(smoke=smoke)
    print(f"quota efficiency: {len(sample.profiles)} events generated", file=sys.stderr)
    rows = []
    for streamed, label in (
        (False, "as one backlog"),
        (True, "streamed at full speed, 1 s window"),
    ):
        r = replay(sample, streamed=streamed)
        if not r.exact:
            print(f"WARNING: final state differs from the expected one ({label})", file=sys.stderr)
        rows.append(
            Row(
                "quota efficiency",
                f"PATCH requests, {len(sample.profiles):,} events {label} "
                f"(lower bound {r.lower_bound:,}; final state exact: {r.exact})",
                r.requests,
                r.reference,
                "one PATCH per profile evaluation (the reference destination)",
                goal=f"= lower bound ({r.lower_bound:,})",
                higher_is_better=False,
            )
        )
    print(f"quota efficiency: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return rows
