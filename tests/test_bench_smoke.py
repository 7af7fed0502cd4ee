"""The benchmark code runs (tiny sizes), so `make bench` cannot rot; speeds are not asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

# Every benchmark section at tiny sizes: about 40 s alone, far more on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECTIONS = (
    "ingestion",
    "quota efficiency",
    "rate adherence",
    "latency",
    "cost",
    "bulk backfill",
    "bulk faults",
    "identity resolution",
)


def test_bench_smoke_prints_every_section_with_both_figures() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| section") and "---" not in line
    ]
    main = [r for r in rows if r[0] in SECTIONS]  # the per-run detail table follows it
    missing = [s for s in SECTIONS if not any(r[0] == s for r in main)]
    assert not missing, out
    for section, metric, ours, base, *_ in main:
        assert ours and base, f"{section} / {metric} lacks a figure"
    efficiency = [r for r in main if r[0] == "quota efficiency"]
    assert all("final state exact: True" in r[1] for r in efficiency), efficiency
    ours_429 = [r for r in main if r[0] == "rate adherence" and r[1].startswith("429s")]
    assert ours_429 and all(r[2] == "0" for r in ours_429)
