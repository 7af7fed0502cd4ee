"""The benchmark code runs (tiny sizes), so `make bench` cannot rot; speeds are not asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_bench_smoke_prints_a_row_per_run_and_ours_has_no_429() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 4, out  # the header and three runs
    ours = [c.strip() for c in rows[1].split("|")]
    assert ours[1].startswith("outreach-sync")
    assert ours[4] == "0"  # 429s
    assert ours[5] == "25/25"  # delivered
