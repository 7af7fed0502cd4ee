"""One row of the benchmark table: our figure, the baseline's from the same run, the ratio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    section: str  # e.g. "ingestion", "quota efficiency"
    metric: str  # what is measured, with its unit: "events/s, batch API"
    ours: float
    baseline: float
    baseline_name: str  # e.g. "one Celery task per event"
    goal: str = ""  # e.g. ">= 20,000/s and >= 10x"; empty when the issue sets none
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")


def _num(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def render(rows: Sequence[Row]) -> list[str]:
    out = [
        "| section | metric | outreach-sync | baseline | baseline is | ratio | goal |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        ratio = f"x{r.ratio:,.2f}" if r.ratio != float("inf") else "n/a"
        out.append(
            f"| {r.section} | {r.metric} | {_num(r.ours)} | {_num(r.baseline)} "
            f"| {r.baseline_name} | {ratio} | {r.goal} |"
        )
    return out
