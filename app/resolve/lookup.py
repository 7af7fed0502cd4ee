"""Finding prospects by email: one ``GET /prospects?filter[emails]=a,b,...`` per batch (its
pages followed by ``links.next``), or one email per request where Outreach refuses lists."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.resolve.calls import Calls, Lot, NoPermit
from app.resolve.emails import Matches

#: Only what resolution reads of a prospect (a sparse fieldset keeps the answer small).
FIELDS = "emails,updatedAt"
PAGE_SIZE = 100


@dataclass
class Lookup:
    """What a batch of lookups found (every email asked and answered is a key, [] when no
    prospect has it) and what it cost."""

    found: dict[str, Matches] = field(default_factory=dict)
    requests: int = 0
    #: Emails not answered (no permit, 429, 5xx, no answer): looked up again later.
    unanswered: list[str] = field(default_factory=list)
    #: When to come back for the unanswered (seconds from now).
    wait_s: float = 0.0
    #: Outreach answered 400 to a list of emails: ask one per request from now on.
    lists_refused: bool = False


def parse_page(body: str, asked: set[str]) -> tuple[dict[str, Matches], str | None]:
    """The asked emails each prospect of one page has, and the next page's address."""
    doc: Any = json.loads(body)
    out: dict[str, Matches] = {}
    for item in doc.get("data") or []:
        attributes = item.get("attributes") or {}
        updated = str(attributes.get("updatedAt") or "")
        for email in attributes.get("emails") or []:
            key = str(email).strip().lower()  # case folding is ours: Outreach's is undocumented
            if key in asked:
                out.setdefault(key, []).append((int(item["id"]), updated))
    nxt = (doc.get("links") or {}).get("next")
    return out, nxt if isinstance(nxt, str) and nxt else None


async def look_up(calls: Calls, lot: Lot, emails: Sequence[str], *, lists: bool) -> Lookup:
    """Look ``emails`` up, ``lists``: several per request, else one per request."""
    result = Lookup()
    groups = [list(emails)] if lists else [[e] for e in emails]
    for i, group in enumerate(groups):
        ok = await _one(calls, lot, group, result)
        if ok is None and len(group) > 1:
            # 400 to a list: ask one email per request (this batch too).
            result.lists_refused = True
            singles = await look_up(calls, lot, group, lists=False)
            _add(result, singles)
            continue
        if not ok:
            result.unanswered += [e for g in groups[i:] for e in g]
            break
    return result


def _add(result: Lookup, more: Lookup) -> None:
    result.found.update(more.found)
    result.requests += more.requests
    result.unanswered += more.unanswered
    result.wait_s = max(result.wait_s, more.wait_s)


async def _one(calls: Calls, lot: Lot, group: list[str], result: Lookup) -> bool | None:
    """One group's pages; True when answered, False when to come back, None on a 400."""
    asked = set(group)
    found: dict[str, Matches] = {}
    url: str | None = f"{calls.api_url}/prospects"
    params: dict[str, str] | None = {
        "filter[emails]": ",".join(group),
        "fields[prospect]": FIELDS,
        "page[size]": str(PAGE_SIZE),
    }
    while url is not None:
        sent = await calls.send(lot, "GET", url, params=params)
        if isinstance(sent, NoPermit):
            result.wait_s = max(result.wait_s, sent.wait_s)
            return False
        result.requests += 1
        if sent.status == 400 and len(group) > 1:
            return None
        if 400 <= sent.status < 500 and sent.status not in (401, 429):
            # Outreach will not search for this one email: no prospect can be reached by it.
            result.found.update({e: [] for e in group})
            return True
        if sent.status != 200:
            answer = sent.answer
            back = answer.resume_s or answer.retry_at_s
            result.wait_s = max(result.wait_s, (back - answer.received_s) if back else 1.0)
            return False
        page, url = parse_page(sent.body, asked)
        params = None  # links.next carries the whole query
        for email, matches in page.items():
            found.setdefault(email, []).extend(matches)
    result.found.update({e: found.get(e, []) for e in group})
    return True
