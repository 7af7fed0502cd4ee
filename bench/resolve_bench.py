"""First activation of profiles known only by email (issue 21): a share of them already
prospects, the rest not, with ``on_missing: "create"``. Ours (batched, cached lookups; one
POST per new prospect carrying every field) against the naive way measured in the same run
(one lookup per profile, then a PATCH or a create, 16 at a time), each against a sandbox of
its own seeded alike. Then a second activation of the same emails: ours spends no lookup.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.testing.harness import Sandbox, wait_until
from bench.pipeline import DEST, Pipeline, pipeline
from bench.table import Row

AUDIENCE = "email-aud"
QUOTA = ("--quota-limit", "10000000", "--quota-window-s", "3600")
CHUNK = 5000


@dataclass(frozen=True)
class Result:
    label: str
    profiles: int
    existing: int
    lookups: int
    creates: int
    patches: int
    seconds: float
    one_per_email: bool

    @property
    def total(self) -> int:
        return self.lookups + self.creates + self.patches


def emails(n: int) -> tuple[list[str], list[str]]:
    """(existing, new): the first 80% already prospects."""
    every = [f"person{i}@example.com" for i in range(n)]
    cut = n * 4 // 5
    return every[:cut], every[cut:]


def _profile(email: str, status: str) -> dict[str, Any]:
    return {
        "identityMap": {"Email": [{"id": email}]},
        "segmentMembership": {"ups": {AUDIENCE: {"status": status}}},
        "attributes": {"firstName": {"value": email.split("@")[0]}},
    }


def _counts(sandbox: Sandbox) -> tuple[int, int, int]:
    """(lookups, creates, PATCHes) in the sandbox's request log."""
    log = sandbox.get("/_sandbox/requests?since=0")["requests"]
    lookups = sum(1 for x in log if x["method"] == "GET" and x["path"].endswith("/prospects"))
    creates = sum(1 for x in log if x["method"] == "POST" and x["path"].endswith("/prospects"))
    patches = sum(1 for x in log if x["method"] == "PATCH")
    return lookups, creates, patches


def _one_per_email(sandbox: Sandbox, every: list[str]) -> bool:
    found = sandbox.emails()
    return all(len(found.get(e, [])) == 1 for e in every)


def _landed(run: Pipeline, every: list[str], status: str) -> bool:
    found, held = run.sandbox.emails(), run.sandbox.prospects()
    return all(
        len(found.get(e, [])) == 1 and held[found[e][0]].get("custom1") == status for e in every
    )


def run_ours(n: int) -> tuple[Result, Result]:
    existing, new = emails(n)
    every = existing + new
    identity = {"match": ["OutreachId", "Email"], "on_missing": "create"}
    with pipeline(
        sandbox_args=QUOTA,
        rate_limit="10000000/hour",
        audiences={AUDIENCE: 1},
        attributes={"firstName": "firstName"},
        destination={"identity": identity},
        COALESCE_WINDOW_MS="0",
        CLAIM_BATCH="100",
        HTTP_CONCURRENCY="32",
    ) as run:
        run.sandbox.seed([{"emails": [e]} for e in existing])
        t0 = time.monotonic()
        for start in range(0, n, CHUNK):
            run.producer.send(DEST, [_profile(e, "realized") for e in every[start : start + CHUNK]])
        run.start_workers(2)
        wait_until(lambda: _landed(run, every, "realized"), timeout_s=120 + n / 50,
                   what="the first activation", every_s=1.0)  # fmt: skip
        first = Result("ours, first activation", n, len(existing), *_counts(run.sandbox),
                       time.monotonic() - t0, _one_per_email(run.sandbox, every))  # fmt: skip
        t1 = time.monotonic()
        for start in range(0, n, CHUNK):
            run.producer.send(DEST, [_profile(e, "exited") for e in every[start : start + CHUNK]])
        wait_until(lambda: _landed(run, every, "exited"), timeout_s=120 + n / 50,
                   what="the second activation", every_s=1.0)  # fmt: skip
        lookups, creates, patches = _counts(run.sandbox)
        second = Result("ours, second activation", n, n, lookups - first.lookups,
                        creates - first.creates, patches - first.patches,
                        time.monotonic() - t1, _one_per_email(run.sandbox, every))  # fmt: skip
    return first, second


async def _naive(sandbox: Sandbox, every: list[str], *, concurrency: int = 16) -> None:
    """One lookup per profile, then a PATCH of the prospect found or a create."""
    headers = {"Authorization": "Bearer test-token", "Content-Type": "application/vnd.api+json"}
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(email: str) -> None:
            attrs = {"custom1": "realized", "firstName": email.split("@")[0]}
            async with gate:
                params = {"filter[emails]": email, "fields[prospect]": "emails"}
                async with session.get(f"{sandbox.api_url}/prospects", params=params) as r:
                    found = (await r.json())["data"]
                if found:
                    pid = found[0]["id"]
                    body = {"data": {"type": "prospect", "id": pid, "attributes": attrs}}
                    url, method = f"{sandbox.api_url}/prospects/{pid}", "PATCH"
                else:
                    body = {
                        "data": {"type": "prospect", "attributes": {**attrs, "emails": [email]}}
                    }
                    url, method = f"{sandbox.api_url}/prospects", "POST"
                async with session.request(method, url, data=json.dumps(body)) as r:
                    await r.read()

        await asyncio.gather(*(one(e) for e in every))


def run_naive(n: int) -> Result:
    existing, new = emails(n)
    sandbox = Sandbox(*QUOTA)
    try:
        sandbox.seed([{"emails": [e]} for e in existing])
        t0 = time.monotonic()
        asyncio.run(_naive(sandbox, existing + new))
        return Result("naive: a lookup per profile, then PATCH or create", n, len(existing),
                      *_counts(sandbox), time.monotonic() - t0,
                      _one_per_email(sandbox, existing + new))  # fmt: skip
    finally:
        sandbox.stop()


def run(*, smoke: bool, profiles: int | None = None) -> tuple[list[Row], list[Result]]:
    n = profiles or (200 if smoke else 10_000)
    print(f"identity resolution: {n:,} profiles known by email", file=sys.stderr, flush=True)
    first, second = run_ours(n)
    naive = run_naive(n)
    new = n - first.existing
    goal = 1.05 * (first.existing + new + first.lookups)
    what = f"{n:,} profiles by email, {first.existing:,} already prospects"
    base = "a lookup per profile, then PATCH or create"
    rows = [
        Row("identity resolution", f"requests, first activation, {what}; one prospect per "
            f"email: {first.one_per_email}", first.total, naive.total, base,
            goal=f"<= {goal:,.0f} (1.05 x (existing + new + lookups))", higher_is_better=False),
        Row("identity resolution", f"lookups, first activation, {what}", first.lookups,
            naive.lookups, base, goal=f"~{n / 50:,.0f} (one per 50)", higher_is_better=False),
        Row("identity resolution", f"lookups, second activation; one prospect per email: "
            f"{second.one_per_email}", second.lookups, naive.lookups, base, goal="0",
            higher_is_better=False),
    ]  # fmt: skip
    return rows, [first, second, naive]


def detail(runs: list[Result]) -> list[str]:
    out = ["| run | profiles | lookups | creates | PATCHes | total | one per email | seconds |"]
    out.append("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in runs:
        out.append(
            f"| {r.label} | {r.profiles:,} | {r.lookups:,} | {r.creates:,} | {r.patches:,} "
            f"| {r.total:,} | {r.one_per_email} | {r.seconds:.0f} |"
        )
    return out
