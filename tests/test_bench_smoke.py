"""The benchmark code runs (tiny sizes), so `make bench` cannot rot; speeds are not asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

# Every benchmark section at tiny sizes: about 90 s in all alone, far more on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


#: The sections in groups of about equal time, each group one process: the suite's processes
#: run them side by side instead of one test holding a process for the whole benchmark.
GROUPS = {
    "ingestion efficiency rate": ("ingestion", "quota efficiency", "rate adherence"),
    "latency": ("latency", "cost"),
    "bulk": ("bulk backfill",),
    "bulk-faults": ("bulk faults",),
    "resolve": ("identity resolution",),
    "enrollment": ("enrollment",),
}


@pytest.mark.parametrize("group", GROUPS)
def test_bench_smoke_prints_every_section_with_both_figures(group: str) -> None:
    only = [arg for name in group.split() for arg in ("--only", name)]
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", *only],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    sections = GROUPS[group]
    rows = [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| section") and "---" not in line
    ]
    main = [r for r in rows if r[0] in sections]  # the per-run detail table follows it
    missing = [s for s in sections if not any(r[0] == s for r in main)]
    assert not missing, out
    for section, metric, ours, base, *_ in main:
        assert ours and base, f"{section} / {metric} lacks a figure"
    efficiency = [r for r in main if r[0] == "quota efficiency"]
    assert all("final state exact: True" in r[1] for r in efficiency), efficiency
    ours_429 = [r for r in main if r[0] == "rate adherence" and r[1].startswith("429s")]
    if "rate adherence" in sections:
        assert ours_429 and all(r[2] == "0" for r in ours_429)
