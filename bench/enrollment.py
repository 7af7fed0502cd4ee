"""Sequence enrollment (issue 23): N prospects entering an audience whose destination enrolls
them into a sequence, without faults and with 5% of the enrollments' answers lost after the
state was created (half a dropped connection, half a 5xx) and 5% of lookups failing: how many
calls an enrollment costs, and whether exactly N states exist at the end."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from app.testing.harness import wait_until
from bench.pipeline import DEST, Pipeline, pipeline
from bench.table import Row

SEQ = 7
MAILBOX = 45
AUDIENCE = "enroll"
CHUNK = 5000


@dataclass(frozen=True)
class Result:
    label: str
    prospects: int
    posts: int
    lookups: int
    states: int
    duplicated: int
    found_after_unknown: int
    lost_answers: int
    seconds: float
    exact: bool

    @property
    def calls_per_enrollment(self) -> float:
        return (self.posts + self.lookups) / self.prospects


def _profile(p: int) -> dict[str, Any]:
    member = {"status": "realized", "lastQualificationTime": "2026-11-02T00:00:00Z"}
    return {
        "identityMap": {"OutreachId": [{"id": str(p)}]},
        "segmentMembership": {"ups": {AUDIENCE: member}},
    }


def _arm(run: Pipeline) -> None:
    post, get = "POST /api/v2/sequenceStates", "GET /api/v2/sequenceStates"
    run.sandbox.arm_fault(post, "drop_after_write", rate=0.025)
    run.sandbox.arm_fault(post, "5xx_after_write", rate=0.025, status=502)
    run.sandbox.arm_fault(get, "5xx", rate=0.05, status=503)


def run_one(n: int, *, faults: bool, label: str) -> Result:
    sequencing = {
        "sequences": {AUDIENCE: {"sequence": SEQ, "mailbox": MAILBOX}},
        "retry_base_s": 0.2,
        "quota_share": 0.5,
        "per_drain": 200,
    }
    with pipeline(
        sandbox_args=("--prospect-ids", "1", str(n + 10), "--fault-seed", "23"),
        rate_limit="100000/hour",
        audiences={AUDIENCE: 3},
        destination={"sequencing": sequencing},
        COALESCE_WINDOW_MS="0",
        CLAIM_BATCH="200",
        HTTP_CONCURRENCY="32",
        LEASE_MS="5000",
        OUTREACH_TIMEOUT_S="3",
    ) as run:
        run.sandbox.post("/_sandbox/sequences", {"sequences": [{"id": SEQ, "name": "bench"}]})
        mailbox = {"id": MAILBOX, "user": "test-user", "email": "b@x.com", "default": True}
        run.sandbox.post("/_sandbox/mailboxes", {"mailboxes": [mailbox]})
        if faults:
            _arm(run)
        for start in range(1, n + 1, CHUNK):
            run.producer.send(DEST, [_profile(p) for p in range(start, min(n + 1, start + CHUNK))])
        t0 = time.monotonic()
        run.start_workers(2, concurrency=1)
        states_key, counts_key = run.keys.enroll_states(DEST), run.keys.enroll_counts(DEST)

        def settled() -> bool:
            if run.client.hlen(states_key) < n or run.client.zcard(run.keys.enroll_due(DEST)):
                return False
            return run.idle()

        wait_until(settled, timeout_s=120 + n / 20, what="every enrollment settled", every_s=0.5)
        seconds = time.monotonic() - t0
        log = run.sandbox.get("/_sandbox/requests?since=0")["requests"]
        calls = [r for r in log if r["path"].endswith("/sequenceStates")]
        posts = sum(r["method"] == "POST" for r in calls)
        lookups = sum(r["method"] == "GET" for r in calls)
        lost = sum(r["method"] == "POST" and r["status"] in (0, 502) for r in calls)
        states = run.sandbox.get("/_sandbox/sequence-states")["states"]
        per = Counter(s["prospect_id"] for s in states)
        figures = {k.decode(): int(v) for k, v in run.client.hgetall(counts_key).items()}
    result = Result(
        label,
        n,
        posts,
        lookups,
        len(states),
        sum(c - 1 for c in per.values()),
        figures.get(f"{AUDIENCE}|found_after_unknown", 0),
        lost,
        seconds,
        set(per) == set(range(1, n + 1)) and max(per.values()) == 1,
    )
    print(
        f"enrollment {label}: {posts} POSTs, {lookups} lookups, {len(states)} states, "
        f"exact={result.exact}",
        file=sys.stderr,
        flush=True,
    )
    return result


def run(*, smoke: bool, prospects: int | None = None) -> tuple[list[Row], list[Result]]:
    n = prospects or (40 if smoke else 2000)
    calm = run_one(n, faults=False, label="no faults")
    hit = run_one(n, faults=True, label="5% answers lost after the write, 5% lookups 503")
    base = "the same enrollment without faults, same run"
    what = f"{n:,} prospects entering an audience with a sequence"
    rows = [
        Row("enrollment", f"calls per enrollment, no faults, {what}; exact: {calm.exact}",
            calm.calls_per_enrollment, 1.0, "the goal: one POST per enrollment", goal="1",
            higher_is_better=False),
        Row("enrollment", f"calls per enrollment, faults ({hit.lost_answers} answers lost); "
            f"exact: {hit.exact}", hit.calls_per_enrollment, calm.calls_per_enrollment, base,
            goal="1 + lookups after unknown outcomes", higher_is_better=False),
        Row("enrollment", "enrollments made (sequence states), faults", hit.states,
            calm.states, base, goal=f"= {n:,}"),
    ]  # fmt: skip
    return rows, [calm, hit]


def detail(runs: list[Result]) -> list[str]:
    out = [
        "| enrollment run | prospects | POSTs | lookups | answers lost | found by lookup "
        "| states | duplicates | seconds | exactly one each |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        out.append(
            f"| {r.label} | {r.prospects:,} | {r.posts:,} | {r.lookups:,} | {r.lost_answers:,} "
            f"| {r.found_after_unknown:,} | {r.states:,} | {r.duplicated:,} | {r.seconds:.0f} "
            f"| {r.exact} |"
        )
    return out
