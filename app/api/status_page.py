"""The HTML status page: ``GET /status`` (every destination) and ``GET /status/{id}``.

Rendered on the server from the status document (app/ops/status.py), every value escaped, and
refreshed in the browser by ``static/status.js`` from ``/status/{id}/data.json``. Admin only
(app/api/adminauth.py); self-contained (no CDN) under a strict Content-Security-Policy. Failures
show reasons and field names, never a value.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from html import escape
from importlib import resources

from aiohttp import web

from app.api.adminauth import admin_refusal
from app.api.jsonapi import error_response
from app.api.status_charts import render_charts
from app.core.settings import Settings
from app.ops.status import BadQuery, destination_status, parse_hours
from app.ops.status_doc import (
    AudienceRow,
    DestinationStatus,
    Failure,
    Quota,
    ResolveStatus,
    duration,
)
from app.ratelimit.gate import QuotaGate
from app.store.prospects import ProspectStore
from app.store.registry import Registry

#: Newest failure records shown on a destination's page.
FAILURES_SHOWN = 20
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}
#: (summary key, label) of the dataflow table, in order.
FLOW_ROWS = (
    ("profiles_received", "Profiles received"),
    ("profiles_accepted", "Accepted"),
    ("profiles_excluded", "Excluded"),
    ("profiles_rejected", "Rejected"),
    ("audiences_ignored", "Audiences ignored (no mapping ID)"),
    ("attributes_unmapped", "Attributes left out (not mapped)"),
    ("attributes_rejected", "Attributes rejected"),
    ("prospects_activated", "Identities activated (prospects updated)"),
    ("fields_activated", "Fields activated"),
    ("prospects_skipped_noop", "Skipped as no-op (prospects)"),
    ("failed", "Failed"),
    ("retried", "Retried"),
    ("rate_limited", "429s"),
    ("requests", "Requests spent"),
)


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, *, data: Mapping[str, str] | None = None) -> str:
    attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (data or {}).items())
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        '<link rel=stylesheet href="/status/assets/status.css">'
        '<script defer src="/status/assets/status.js"></script>'
        f"</head><body{attrs}>{body}</body></html>\n"
    )


def _table(head: Iterable[str], rows: Iterable[Iterable[object]], *, tbody_id: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    tid = f' id="{_e(tbody_id)}"' if tbody_id else ""
    return f"<table><thead><tr>{th}</tr></thead><tbody{tid}>{trs}</tbody></table>"


def _clock(epoch_s: float | None) -> str:
    return "—" if not epoch_s else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch_s))


def _reasons(by: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by.items())


def audience_cells(row: AudienceRow) -> list[object]:
    t = row.totals
    by = t.activated_by_status
    name = row.audience or "(no longer mapped)"
    return [
        name
        + (" — refused by Outreach" if row.invalid else "")
        + (f" — {row.mapping_issue}" if row.mapping_issue else ""),
        row.mapping_id,
        row.field,
        t.received,
        t.activated,
        by.get("realized", 0),
        by.get("existing", 0),
        by.get("exited", 0),
        t.skipped_noop,
        t.excluded,
        t.failed,
        _reasons(t.failed_by_reason),
    ]


AUDIENCE_HEAD = (
    "Audience",
    "Mapping ID",
    "Field",
    "Received",
    "Activated",
    "Realized",
    "Existing",
    "Exited",
    "No-op",
    "Excluded",
    "Failed",
    "Failure reasons",
)
#: The window picker's choices (hours, label).
PICKER = ((1, "1 h"), (24, "24 h"), (168, "7 days"))
FAILURE_HEAD = ("When", "Reason", "HTTP", "Error", "Detail", "Fields", "Mapping IDs", "Failure ID")


def failure_cells(f: Failure) -> list[object]:
    error = " / ".join(str(x) for x in (f.error_id, f.title) if x)
    return [
        f.at,
        f.reason,
        f.status or "—",
        error or "—",
        f.detail,
        ", ".join(f.fields),
        ", ".join(str(m) for m in f.mapping_ids) or "—",
        f.id,
    ]


def _card(title: str, items: Iterable[tuple[str, object, str]], *, wide: bool = False) -> str:
    dl = "".join(f'<dt>{_e(k)}</dt><dd data-k="{_e(key)}">{_e(v)}</dd>' for k, v, key in items)
    kind = "card wide" if wide else "card"
    return f'<section class="{kind}"><h2>{_e(title)}</h2><dl>{dl}</dl></section>'


def quota_items(q: Quota | None) -> list[tuple[str, object, str]]:
    """The quota card: Outreach's figures, ours, and the limit that governs, each named for
    whose it is (``data-k`` keys the page's script fills in)."""
    if q is None:
        return [("Outreach user", "— (no connection record)", "quota.user")]
    told = q.reported_limit is not None and q.server_reset_s is not None
    spent = f"{_or_dash(q.outreach_spent)} of {q.reported_limit}" if told else "— (no report)"
    source = "configured rate_limit" if q.governing == "configured" else "Outreach's limit"
    return [
        ("spent this window (Outreach's count)", spent, "quota.outreach_spent"),
        ("left (Outreach's count)", _or_dash(q.server_remaining), "quota.server_remaining"),
        ("Outreach's window resets", _clock(q.server_reset_s), "quota.server_reset"),
        ("our window counted", f"{q.used} of {q.limit}", "quota.used_of"),
        ("left in our window", q.remaining, "quota.remaining"),
        ("limit configured (rate_limit)", q.configured_limit, "quota.configured_limit"),
        ("limit Outreach reports", _or_dash(q.reported_limit), "quota.reported_limit"),
        ("limit that governs", f"{q.governing_limit} ({source})", "quota.governing_limit"),
        ("why", q.governing_why, "quota.governing_why"),
        ("paused until", _clock(q.paused_until_s), "quota.paused"),
    ]


def resolve_items(r: ResolveStatus) -> list[tuple[str, object, str]]:
    """The resolution card: what waits for its prospect, and what finding them cost."""
    return [
        ("waiting (resolving now)", f"{r.waiting} ({r.resolving})", "resolve.waiting"),
        ("oldest waiting", duration(r.oldest_waiting_s), "resolve.oldest"),
        ("resolved from cache", r.from_cache, "resolve.from_cache"),
        ("resolved by lookup", f"{r.by_lookup} ({r.lookups} lookups)", "resolve.by_lookup"),
        ("not found", r.not_found, "resolve.not_found"),
        ("ambiguous", r.ambiguous, "resolve.ambiguous"),
        ("created", r.created, "resolve.created"),
        ("rules", f"missing: {r.on_missing}, ambiguous: {r.on_ambiguous}", "resolve.rules"),
    ]


def render_destination(doc: DestinationStatus, *, data_url: str, refresh_s: int) -> str:
    """A destination's page (the JS keeps it fresh from ``data_url``)."""
    conn, q = doc.connection, doc.quota
    state = conn.state or ("unknown connection" if not conn.known else "—")
    m = doc.metrics
    hours = m.window.hours
    cards = [
        _card(
            "Connection",
            [
                ("id", conn.id, "connection.id"),
                ("Outreach user", conn.user or "—", "connection.user"),
                ("state", state, "connection.state"),
                ("reason", conn.reason or "—", "connection.reason"),
            ],
        ),
        _card(f"Quota of {q.user}" if q else "Quota", quota_items(q), wide=True),
        _card(
            "Backlog",
            [
                ("pending", doc.pending, "pending"),
                ("in flight", doc.in_flight, "in_flight"),
                ("lag (oldest change)", duration(doc.lag_s), "lag"),
                ("invalid mapping IDs", _ids(doc.invalid_mapping_ids), "invalid"),
            ],
        ),
    ]
    if doc.resolve.by_email or doc.resolve.waiting:
        cards.append(_card("Identity resolution (by email)", resolve_items(doc.resolve)))
    flow = _table(
        ("", f"Last {hours} h", "Total"),
        ((label, getattr(m.window, key), getattr(m.totals, key)) for key, label in FLOW_ROWS),
        tbody_id="flow",
    )
    reasons = _table(
        ("Excluded by reason", "Failed by reason", "Attributes not mapped"),
        [
            (
                _reasons(m.totals.excluded_by_reason) or "—",
                _reasons(m.totals.failed_by_reason) or "—",
                _reasons(m.totals.unmapped_by_attribute) or "—",
            )
        ],
        tbody_id="reasons",
    )
    audiences = _table(AUDIENCE_HEAD, map(audience_cells, doc.audiences), tbody_id="audiences")
    failures = doc.recent_failures or []
    fail_table = _table(FAILURE_HEAD, map(failure_cells, failures), tbody_id="failures")
    picker = " ".join(
        f'<a href="?hours={h}"{" class=on" if h == hours else ""}>{label}</a>'
        for h, label in PICKER
    )
    enabled = _state(doc)
    body = (
        f'<header><a href="/status">All destinations</a><h1>{_e(doc.name)} '
        f"<small>{_e(doc.destination)} · {enabled}</small></h1>"
        f"<p class=live>As of <span id=updated>{_e(doc.generated_at)}</span> · "
        f"<span id=live>static</span> · window: {picker}</p></header>"
        f"<main>{_broken_note(doc)}"
        f"<div class=cards id=cards>{''.join(cards)}</div>{render_charts(doc)}"
        f"<h2>Dataflow</h2>{flow}{reasons}"
        f"<h2>Audiences</h2>{audiences}{_enrollment(doc)}"
        f"<h2>Recent failures <small>(newest {FAILURES_SHOWN}; values are never shown)</small></h2>"
        f"<p id=no-failures{' hidden' if failures else ''}>No failures recorded.</p>"
        f"<div id=failure-table{'' if failures else ' hidden'}>{fail_table}</div>"
        "</main>"
    )
    return _page(
        f"{doc.name} — outreach-sync status",
        body,
        data={"source": data_url, "refresh": str(refresh_s), "loaded": "false"},
    )


def _enrollment(doc: DestinationStatus) -> str:
    """Sequence enrollment per audience (as of the page's load), when the destination has any."""
    e = doc.enrollment
    if not e.enabled and not e.audiences:
        return ""
    notes = [f"{e.waiting} waiting"] + (["dry run"] if e.dry_run else [])
    if e.paused_until_ms:
        notes.append(f"PAUSED until {_clock(e.paused_until_ms / 1000)}: {e.paused_reason}")
    rows = (
        (r.audience, _or_dash(r.sequence), _or_dash(r.on_exit), _reasons(r.counts) or "—")
        for r in e.audiences
    )
    table = _table(("Audience", "Sequence", "On exit", "Outcomes"), rows)
    return f"<h2>Sequence enrollment <small>({_e(' · '.join(notes))})</small></h2>{table}"


def _state(doc: DestinationStatus) -> str:
    if doc.broken is not None:
        return f"BROKEN: {doc.broken}"
    return "enabled" if doc.enabled else "DISABLED"


def _broken_note(doc: DestinationStatus) -> str:
    if doc.broken is None:
        return ""
    return (
        f"<p class=broken><strong>Its stored record cannot be read:</strong> {_e(doc.broken)}. "
        "Its changes wait, nothing is lost. Replace it (<code>PUT /v1/admin/destinations/"
        f"{_e(doc.destination)}</code>, <code>outreach-sync destinations update</code>) or "
        "delete it.</p>"
    )


def _quota_left(q: Quota | None) -> str:
    if q is None:
        return "—"
    if q.server_remaining is not None:
        return f"{q.server_remaining} (Outreach's count)"
    return f"{q.remaining} (our window)"


def _or_dash(value: object) -> object:
    return "—" if value is None else value


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(map(str, ids)) or "none"


def render_index(docs: Iterable[DestinationStatus], *, hours: int) -> str:
    rows = []
    for d in docs:
        w, q, c = d.metrics.window, d.quota, d.connection
        link = f'<a href="/status/{_e(d.destination)}">{_e(d.destination)}</a>'
        cells = [
            _e(d.name),
            _e(_state(d)),
            _e(c.state or "—"),
            _e(d.pending),
            _e(duration(d.lag_s)),
            _e(w.profiles_received),
            _e(w.prospects_activated),
            _e(w.failed),
            _e(w.requests),
            _e(_quota_left(q)),
        ]
        rows.append(f"<tr><td>{link}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "Destination", "Name", "State", "Connection", "Pending", "Lag",
        f"Received {hours} h", f"Activated {hours} h", f"Failed {hours} h",
        f"Requests {hours} h", "Quota left",
    )  # fmt: skip
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    table = f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    empty = "" if rows else "<p>No destinations configured.</p>"
    body = f"<header><h1>outreach-sync</h1></header><main>{table}{empty}</main>"
    return _page("outreach-sync status", body, data={"loaded": "false"})


# Routes ------------------------------------------------------------------------------------


class _Sources:
    def __init__(
        self, store: ProspectStore, registry: Registry, gate: QuotaGate, settings: Settings
    ) -> None:
        self.store, self.registry, self.gate, self.settings = store, registry, gate, settings

    async def doc(self, dest: str, *, hours: int, failures: int = 0) -> DestinationStatus | None:
        return await destination_status(
            dest,
            store=self.store,
            registry=self.registry,
            gate=self.gate,
            hours=hours,
            failures=failures,
        )


SOURCES = web.AppKey("status_page_sources", _Sources)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)


def _not_found(dest: str) -> web.Response:
    body = f"<main><h1>Unknown destination</h1><p>No destination {_e(repr(dest))}.</p></main>"
    return _html(_page("Unknown destination", body), status=404)


async def _prepare(request: web.Request) -> tuple[_Sources, int] | web.Response:
    sources = request.app[SOURCES]
    refusal = admin_refusal(request, sources.settings)
    if refusal is not None:
        return refusal
    try:
        return sources, parse_hours(request.query.get("hours"), keys=sources.settings.keys)
    except BadQuery as exc:
        return _html(_page("Bad request", f"<main><p>{_e(exc)}</p></main>"), status=400)


async def index(request: web.Request) -> web.Response:
    ready = await _prepare(request)
    if isinstance(ready, web.Response):
        return ready
    sources, hours = ready
    docs = []
    for dest in await sources.registry.all_destination_ids():
        doc = await sources.doc(dest, hours=hours)
        if doc is not None:
            docs.append(doc)
    return _html(render_index(docs, hours=hours))


async def _destination(
    request: web.Request,
) -> tuple[DestinationStatus | None, str, int] | web.Response:
    """The destination a page or its data asks for: its status document (None: no such
    destination), its id and the hours shown; or the answer to give instead."""
    ready = await _prepare(request)
    if isinstance(ready, web.Response):
        return ready
    sources, hours = ready
    dest = request.match_info["destination_id"]
    return await sources.doc(dest, hours=hours, failures=FAILURES_SHOWN), dest, hours


async def destination_page(request: web.Request) -> web.Response:
    found = await _destination(request)
    if isinstance(found, web.Response):
        return found
    doc, dest, hours = found
    if doc is None:
        return _not_found(dest)
    data_url = f"/status/{dest}/data.json?hours={hours}"
    refresh = request.app[SOURCES].settings.status_page_refresh_s
    return _html(render_destination(doc, data_url=data_url, refresh_s=refresh))


async def destination_data(request: web.Request) -> web.Response:
    found = await _destination(request)
    if isinstance(found, web.Response):
        return found
    doc, dest, _ = found
    if doc is None:
        return error_response(404, "Not found", f"no destination {dest!r}")
    # The page reads the summaries, not the flat counters.
    return web.json_response(doc.as_json(counters=False), headers=HEADERS)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    text = resources.files("app.api").joinpath("static", name).read_text(encoding="utf-8")
    headers = {**HEADERS, "Cache-Control": "max-age=300"}
    return web.Response(text=text, content_type=ASSETS[name], headers=headers)


def add_routes(
    app: web.Application,
    store: ProspectStore,
    registry: Registry,
    gate: QuotaGate,
    settings: Settings,
) -> None:
    """``GET /status``, ``/status/{id}``, its ``data.json`` and the page's assets."""
    app[SOURCES] = _Sources(store, registry, gate, settings)
    app.router.add_get("/status", index)
    app.router.add_get("/status/assets/{name}", asset)
    app.router.add_get("/status/{destination_id}", destination_page)
    app.router.add_get("/status/{destination_id}/data.json", destination_data)
