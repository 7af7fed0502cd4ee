// outreach-sync status page: refreshes the server-rendered page from its data.json.
// Every value goes in through textContent, never as HTML; the parts drawn on the server (the
// cards with the quota, the charts) are taken from the page itself, fetched again and parsed
// by DOMParser (inert: nothing in it runs), so they are drawn in one place only.
"use strict";

const FLOW_ROWS = [
  ["profiles_received", "Profiles received"],
  ["profiles_accepted", "Accepted"],
  ["profiles_excluded", "Excluded"],
  ["profiles_rejected", "Rejected"],
  ["audiences_ignored", "Audiences ignored (no mapping ID)"],
  ["attributes_unmapped", "Attributes left out (not mapped)"],
  ["attributes_rejected", "Attributes rejected"],
  ["prospects_activated", "Identities activated (prospects updated)"],
  ["fields_activated", "Fields activated"],
  ["prospects_skipped_noop", "Skipped as no-op (prospects)"],
  ["failed", "Failed"],
  ["retried", "Retried"],
  ["rate_limited", "429s"],
  ["requests", "Requests spent"],
];

function reasons(by) {
  return Object.entries(by || {}).map(([k, v]) => `${k} ${v}`).join(", ");
}

function audienceCells(row) {
  const t = row.totals;
  const by = t.activated_by_status || {};
  const name = (row.audience || "(no longer mapped)") + (row.invalid ? " — refused by Outreach" : "")
    + (row.mapping_issue ? ` — ${row.mapping_issue}` : "");
  return [name, row.mapping_id, row.field, t.received, t.activated, by.realized || 0,
    by.existing || 0, by.exited || 0, t.skipped_noop, t.excluded, t.failed,
    reasons(t.failed_by_reason)];
}

function failureCells(f) {
  const error = [f.error_id, f.title].filter(Boolean).join(" / ");
  return [f.at, f.reason, f.status || "—", error || "—", f.detail || "", f.fields.join(", "),
    f.mapping_ids.join(", ") || "—", f.id];
}

function fill(tbodyId, rows) {
  const tbody = document.getElementById(tbodyId);
  if (!tbody) return;
  const fresh = document.createElement("tbody");
  fresh.id = tbodyId;
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  tbody.replaceWith(fresh);
}

function render(doc) {
  const m = doc.metrics;
  fill("flow", FLOW_ROWS.map(([key, label]) => [label, m.window[key], m.totals[key]]));
  fill("reasons", [[reasons(m.totals.excluded_by_reason) || "—",
    reasons(m.totals.failed_by_reason) || "—",
    reasons(m.totals.unmapped_by_attribute) || "—"]]);
  fill("audiences", doc.audiences.map(audienceCells));
  const failures = doc.recent_failures || [];
  fill("failures", failures.map(failureCells));
  document.getElementById("no-failures").hidden = failures.length > 0;
  document.getElementById("failure-table").hidden = failures.length === 0;
  document.getElementById("updated").textContent = doc.generated_at;
}

const RENDERED = ["cards", "charts"];

async function swapRendered() {
  const answer = await fetch(window.location.href, {credentials: "same-origin", cache: "no-store"});
  if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
  const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
  for (const id of RENDERED) {
    const now = document.getElementById(id);
    const next = fresh.getElementById(id);
    if (now && next) now.replaceWith(document.importNode(next, true));
  }
}

async function refresh() {
  const body = document.body;
  const live = document.getElementById("live");
  try {
    const answer = await fetch(body.dataset.source, {credentials: "same-origin", cache: "no-store"});
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    render(await answer.json());
    await swapRendered();
    body.dataset.loaded = "true";
    if (live) live.textContent = "live";
  } catch (err) {
    if (live) live.textContent = `refresh failed (${err.message}); showing older figures`;
  }
  const every = Number(body.dataset.refresh || 0);
  if (every > 0) setTimeout(refresh, every * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.source) refresh();
  else document.body.dataset.loaded = "true";
});
