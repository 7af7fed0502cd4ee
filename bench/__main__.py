"""``make bench``: run every benchmark in one process, print one table, write docs/benchmarks.md.

``python -m bench --smoke`` runs tiny sizes (the test suite does, so the code cannot rot) and
writes nothing. Nothing here asserts a speed: the table reports, the reader judges.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from bench import (
    bulk_backfill,
    efficiency,
    enrollment,
    ingest_bench,
    latency_cost,
    resolve_bench,
)
from bench.rate_adherence import Quota, Run, run_celery_rate_limit, run_ours
from bench.table import Row, render

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def rate_rows(*, smoke: bool) -> tuple[list[Row], list[Run]]:
    """Ours against Celery's per-worker rate_limit (set to the quota's rate), 1, 2, 4 workers."""
    quota = Quota(limit=10, window_s=1.0) if smoke else Quota(limit=20, window_s=2.0)
    prospects = 25 if smoke else 110
    rows: list[Row] = []
    runs: list[Run] = []
    for workers in (2,) if smoke else (1, 2, 4):
        print(f"rate adherence: {workers} worker(s)", file=sys.stderr, flush=True)
        ours = run_ours(workers=workers, quota=quota, prospects=prospects)
        base = run_celery_rate_limit(
            workers=workers, quota=quota, prospects=prospects, per_worker=quota.rate
        )
        runs += [ours, base]
        name = f"Celery rate_limit {quota.rate:g}/s per worker"
        what = f"{workers} worker(s), quota {quota.limit} per {quota.window_s:g} s"
        rows.append(
            Row(
                "rate adherence",
                f"allowance used, % ({what})",
                100 * ours.used_share,
                100 * base.used_share,
                name,
                goal=">= 98%",
            )
        )
        rows.append(
            Row(
                "rate adherence",
                f"429s received ({what})",
                ours.rate_limited,
                base.rate_limited,
                name,
                goal="0",
                higher_is_better=False,
            )
        )
    return rows, runs


def run_table(runs: list[Run]) -> list[str]:
    out = ["| run | requests | 200 | 429 | delivered | allowance used | seconds |"]
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        out.append(
            f"| {r.label} | {r.requests} | {r.ok} | {r.rate_limited} "
            f"| {r.delivered}/{r.prospects} | {r.used_share:.1%} | {r.seconds:.0f} |"
        )
    return out


#: The sections ``--only`` may name, in the order a whole run makes them.
SECTIONS = (
    "ingestion",
    "efficiency",
    "rate",
    "latency",
    "bulk",
    "bulk-faults",
    "resolve",
    "enrollment",
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no document written")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="this section only (repeat for several; printed, no document written)",
    )
    parser.add_argument(
        "--bulk-prospects", type=int, help="size of the bulk backfill (default 50,000)"
    )
    parser.add_argument(
        "--bulk-fault-prospects",
        type=int,
        help="size of the bulk backfill under faults (default 20,000)",
    )
    parser.add_argument(
        "--resolve-profiles",
        type=int,
        help="profiles known by email in the identity-resolution run (default 10,000)",
    )
    parser.add_argument(
        "--enroll-prospects", type=int, help="size of the enrollment run (default 2,000)"
    )
    ns = parser.parse_args()
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.monotonic()
    rows, detail = [], []
    only = set(ns.only or SECTIONS)
    if "ingestion" in only:
        rows += ingest_bench.run(smoke=ns.smoke)
    if "efficiency" in only:
        rows += efficiency.run(smoke=ns.smoke)
    if "rate" in only:
        rate, runs = rate_rows(smoke=ns.smoke)
        rows += rate
        detail = run_table(runs)
    if "latency" in only:
        rows += latency_cost.run(smoke=ns.smoke)
    if "bulk" in only:
        bulk, bulk_runs = bulk_backfill.run(smoke=ns.smoke, prospects=ns.bulk_prospects)
        rows += bulk
        detail += ["", *bulk_backfill.detail(bulk_runs)]
    if "bulk-faults" in only:
        faults, fault_runs = bulk_backfill.run_faults(
            smoke=ns.smoke, prospects=ns.bulk_fault_prospects
        )
        rows += faults
        detail += ["", *bulk_backfill.fault_detail(fault_runs)]
    if "resolve" in only:
        resolved, resolve_runs = resolve_bench.run(smoke=ns.smoke, profiles=ns.resolve_profiles)
        rows += resolved
        detail += ["", *resolve_bench.detail(resolve_runs)]
    if "enrollment" in only:
        enrolled, enroll_runs = enrollment.run(smoke=ns.smoke, prospects=ns.enroll_prospects)
        rows += enrolled
        detail += ["", *enrollment.detail(enroll_runs)]
    table = render(rows)
    print("\n".join(table))
    print()
    print("\n".join(detail))
    elapsed = time.monotonic() - t0
    print(f"\n{elapsed:.0f} s in all")
    if not ns.smoke and ns.only is None:
        _write(table, detail, started, elapsed)


def _write(table: list[str], detail: list[str], started: str, elapsed: float) -> None:
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    text = f"""# Benchmarks

Produced by `make bench` (`python -m bench`) on {started}, in {elapsed:.0f} s; machine:
{machine}. Every figure comes from that one run, each baseline measured in the same run;
re-run the command to reproduce. Nothing in `make test` asserts a speed (it runs
`python -m bench --smoke`, tiny sizes, so the code cannot rot).

{chr(10).join(table)}

How each is measured:
- **ingestion**: events accepted into Redis per second through the Python batch API (chunks
  of 1,000) and the HTTP endpoint (NDJSON, 4 concurrent clients), against enqueuing one
  Celery task per event on the same Redis. The input sample (100,000 profiles and their
  bodies) is frozen out of the benchmark process's garbage collector for both paths: a
  producer streams its events, and traversing a sample it would not hold made a third of
  the batch API's time.
- **quota efficiency**: the fixed-seed reference workload (`bench/efficiency.py`: 200,000
  events over 20,000 prospects and 24 audiences, with repeats, exits, re-entries, 10%
  out-of-order evaluations and attribute updates) replayed through the whole pipeline
  against the sandbox. The lower bound is the number of prospects whose final state differs
  from what Outreach held (all of them: the sandbox starts empty); the reference destination
  sends one PATCH per accepted profile evaluation. "Final state exact" compares every
  prospect in the sandbox with the workload's own ground truth.
- **rate adherence**: a backlog of several quota windows drained against the sandbox's
  scaled-down quota; the baseline is Celery's `rate_limit` set to the quota's rate, which
  holds per worker, and retries a 429 twice before dropping the update, as the reference
  destination does. Per run:

{chr(10).join(detail)}

- **latency**: event accepted → PATCH received by the sandbox, at a steady load under the
  quota. Ours waits for the coalescing window by design (that is what turns many changes
  into one request); the per-event baseline does not coalesce.
- **cost**: worker CPU and peak memory per 10,000 delivered updates, and Redis memory for
  100,000 pending prospects against 100,000 queued per-event Celery messages.
- **bulk backfill** (`bench/bulk_backfill.py`): an audience's first activation (every
  prospect at once, a tenth also in a second audience, 3 in 1,000 with a single attribute
  change arriving during the backfill) at 10,000 requests per quota window, the window
  scaled from an hour to 10 s; bulk delivery against PATCH alone, with the sandbox charging
  a bulk call once and per record. Quota-hours are the quota spent at 10,000 an hour; the
  windows elapsed until the final state was exact are in the per-run table (for bulk the
  workers' CPU, not the quota, sets that pace at this time scale). Peak Redis memory is
  sampled above the level before the run (shared Redis: approximate).
  `python -m bench --only bulk --bulk-prospects N` runs it alone.
- **bulk faults** (`bench/bulk_backfill.py`, `run_faults`): the same backfill at 20,000
  prospects, bulk on and charged per call, twice: without faults, and with 5% of the
  sandbox's answers a 5xx plus the first worker killed (`kill -9`) once it has two batches in
  flight (a second worker starts at that moment in both runs). Both use a 10 s batch deadline
  and a 5 s lease, so the killed worker's batches are cancelled and their claims back within
  seconds. `python -m bench --only bulk-faults --bulk-fault-prospects N` runs it alone.
- **identity resolution** (`bench/resolve_bench.py`): the first activation of N profiles
  known only by email (10,000, scaled down from the issue's 100,000), 80% of them already
  prospects, with `on_missing: "create"`, by two workers; against the naive way in the same
  run (one lookup per profile, then a PATCH or a create, 16 at a time) on a sandbox seeded
  alike. Then a second activation of the same emails. "One prospect per email" is checked
  in the sandbox after each. `python -m bench --only resolve --resolve-profiles N` runs it
  alone.
- **enrollment** (`bench/enrollment.py`): N prospects entering an audience whose sequence
  enrolls them, twice: without faults, and with 5% of the enrollments' answers lost after
  Outreach created the state (2.5% dropped connections, 2.5% 502s) and 5% of lookups
  answered 503. Calls per enrollment count every `POST` and `GET /sequenceStates`.
  `python -m bench --only enrollment --enroll-prospects N` runs it alone.
"""
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"written: {DOC.relative_to(DOC.parent.parent)}")


if __name__ == "__main__":
    sys.exit(main())
