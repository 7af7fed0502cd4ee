"""The status page's charts: one destination's hours as inline SVG, drawn on the server.

No front-end build and no script: each chart is an ``<svg role=img>`` with a title and a
description a screen reader speaks, one bar per hour whose ``<title>`` names the hour and its
value (``data-hour``, ``data-value``: the figures of the JSON status, for tools and tests).
Colours come from classes in ``static/status.css``, which follows ``prefers-color-scheme``:
the page's Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from app.ops.status_doc import DestinationStatus, HourFlow

WIDTH, HEIGHT = 560, 150
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 22


@dataclass(frozen=True, slots=True)
class Chart:
    """One chart: ``key`` names the :class:`HourFlow` figure it draws."""

    key: str
    title: str
    unit: str


CHARTS = (
    Chart("profiles_received", "Profiles received", "profiles"),
    Chart("prospects_activated", "Prospects activated", "prospects"),
    Chart("profiles_excluded", "Profiles excluded (no usable OutreachId)", "profiles"),
    Chart("failed", "Failed (dead letters)", "failures"),
    Chart("rate_limited", "429 answers from Outreach", "429s"),
    Chart("requests", "Requests spent against the governing limit", "requests"),
    Chart("pending", "Backlog: prospects waiting (last seen in the hour)", "prospects"),
    Chart("lag_s", "Lag: oldest change not yet delivered (last seen in the hour)", "s"),
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _nice(top: float) -> int:
    """The axis top: ``top`` rounded up to 1, 2 or 5 times a power of ten."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= top:
                return m * step
        step *= 10


def hourly_limit(doc: DestinationStatus) -> int | None:
    """The governing quota limit per hour (a window of another length scaled to an hour)."""
    q = doc.quota
    if q is None or q.window_s <= 0:
        return None
    return round(q.governing_limit * 3600 / q.window_s)


def chart_svg(
    chart: Chart, hours: Sequence[HourFlow], *, limit: int | None = None, chart_id: str
) -> str:
    """One chart as a ``<figure>``; ``limit`` draws a dashed line at that value."""
    values: list[int | None] = [getattr(h, chart.key) for h in hours]
    known = [v for v in values if v is not None]
    most = max([*known, 1])
    # A limit far above the bars would flatten them: then it is named, not drawn to scale.
    top = _nice(max(most, limit) if limit is not None and limit <= 2 * most else most)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / max(1, len(hours))

    def y(v: float) -> float:
        return TOP + plot_h - plot_h * v / top

    parts = [
        f'<line class=axis x1="{LEFT}" y1="{y(0):.1f}" x2="{WIDTH - RIGHT}" y2="{y(0):.1f}"/>',
        f'<line class=grid x1="{LEFT}" y1="{y(top):.1f}" x2="{WIDTH - RIGHT}" y2="{y(top):.1f}"/>',
        f'<text class=tick x="{LEFT - 4}" y="{y(top) + 4:.1f}" text-anchor=end>{top}</text>',
        f'<text class=tick x="{LEFT - 4}" y="{y(0):.1f}" text-anchor=end>0</text>',
    ]
    for i, (hour, v) in enumerate(zip(hours, values, strict=True)):
        x = LEFT + i * bar_w
        height = 0.0 if v is None else plot_h * v / top
        said = "not sampled" if v is None else f"{v} {chart.unit}"
        parts.append(
            f'<rect class=bar x="{x + bar_w * 0.1:.1f}" y="{y(0) - height:.1f}" '
            f'width="{max(bar_w * 0.8, 0.5):.1f}" height="{height:.1f}" '
            f'data-hour="{_e(hour.hour)}" data-value="{"" if v is None else v}">'
            f"<title>{_e(_label(hour.hour))}: {_e(said)}</title></rect>"
        )
    if limit is not None and limit <= top:
        parts.append(
            f'<line class=limit x1="{LEFT}" y1="{y(limit):.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{y(limit):.1f}"><title>limit {limit} per hour</title></line>'
        )
    elif limit is not None:
        parts.append(
            f'<text class="tick over" x="{WIDTH - RIGHT}" y="{TOP + 12}" text-anchor=end>'
            f"limit {limit} per hour: above this scale</text>"
        )
    if hours:
        first, last = _label(hours[0].hour), _label(hours[-1].hour)
        base = HEIGHT - 6
        parts.append(f'<text class=tick x="{LEFT}" y="{base}">{_e(first)}</text>')
        parts.append(
            f'<text class=tick x="{WIDTH - RIGHT}" y="{base}" text-anchor=end>{_e(last)}</text>'
        )
    desc = _describe(chart, hours, values, limit)
    return (
        f'<figure class=chart data-chart="{_e(chart.key)}">'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role=img data-limit="{_e(limit or "")}" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d">'
        f'<title id="{chart_id}-t">{_e(chart.title)}</title>'
        f'<desc id="{chart_id}-d">{_e(desc)}</desc>{"".join(parts)}</svg>'
        f"<figcaption>{_e(chart.title)}</figcaption></figure>"
    )


def _label(hour: str | None) -> str:
    """``2026-12-03T14:00:00Z`` as ``12-03 14:00``."""
    return "" if hour is None else f"{hour[5:10]} {hour[11:16]}"


def _describe(
    chart: Chart, hours: Sequence[HourFlow], values: Sequence[int | None], limit: int | None
) -> str:
    if not hours:
        return "No hours to show."
    known = [(v, h) for v, h in zip(values, hours, strict=True) if v is not None]
    span = f"Per hour from {_label(hours[0].hour)} to {_label(hours[-1].hour)} UTC"
    if not known:
        return f"{span}: not sampled."
    peak, at = max(known, key=lambda t: t[0])
    text = f"{span}: highest {peak} {chart.unit} at {_label(at.hour)}"
    if chart.key not in ("pending", "lag_s"):
        text += f", {sum(v for v, _ in known)} in all"
    return text + (f"; limit {limit} per hour." if limit is not None else ".")


def render_charts(doc: DestinationStatus) -> str:
    """Every chart of ``doc``'s hours, in a ``<section id=charts>`` the page's script renews."""
    hours = doc.metrics.hourly
    limit = hourly_limit(doc)
    figures = "".join(
        chart_svg(c, hours, limit=limit if c.key == "requests" else None, chart_id=f"ch-{c.key}")
        for c in CHARTS
    )
    span = "7 days" if len(hours) == 168 else f"{len(hours)} h"
    return (
        f"<section id=charts><h2>Last {span}, per hour <small>(UTC; backlog and lag as last "
        f"seen in each hour)</small></h2><div class=charts>{figures}</div></section>"
    )
