"""The Outreach requests of enrollment (JSON:API bodies and filters), and reading their
answers. Pure but for `Caller`, which sends one request on a permit of the quota gate."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from app.config.destinations import Connection
from app.core.errors import DeliveryError, Retryable
from app.outreach.answers import Answer, classify, no_answer, parse_answer
from app.outreach.client import OutreachClient, Response
from app.ratelimit.gate import Grant, QuotaGate, Share

#: States of a prospect in a sequence that an exit acts on (and that count as enrolled).
LIVE_STATES = frozenset({"active", "paused", "pending", "failed", "bounced", "disabled"})


def enroll_body(prospect: int, sequence: int, mailbox: int) -> bytes:
    """``POST /sequenceStates``: the prospect into the sequence, sending from the mailbox."""
    rel = {
        "prospect": {"data": {"type": "prospect", "id": prospect}},
        "sequence": {"data": {"type": "sequence", "id": sequence}},
        "mailbox": {"data": {"type": "mailbox", "id": mailbox}},
    }
    doc = {"data": {"type": "sequenceState", "relationships": rel}}
    return json.dumps(doc, separators=(",", ":")).encode()


def state_filter(prospect: int, sequence: int) -> dict[str, str]:
    """``GET /sequenceStates`` for one prospect in one sequence."""
    return {"filter[prospect][id]": str(prospect), "filter[sequence][id]": str(sequence)}


def read_states(body: str) -> list[tuple[int, str]]:
    """(id, state) of each sequenceState of a list answer."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return []
    out = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and str(item.get("id", "")).isdigit():
            state = (item.get("attributes") or {}).get("state")
            out.append((int(item["id"]), str(state)))
    return out


def created_id(body: str) -> int | None:
    """The id of a created sequenceState."""
    try:
        raw = json.loads(body)["data"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return int(raw) if str(raw).isdigit() else None


def default_mailbox(body: str) -> int | None:
    """A user's default mailbox: the ``mailbox`` relationship of a user, else the first of a
    mailbox list that can send."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, dict):
        linked = ((data.get("relationships") or {}).get("mailbox") or {}).get("data")
        return _int(linked.get("id")) if isinstance(linked, dict) else None
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and not (item.get("attributes") or {}).get("sendDisabled"):
            return _int(item.get("id"))
    return None


def owner_of(body: str) -> str | None:
    """The owner user id of a prospect resource."""
    try:
        owner = json.loads(body)["data"]["relationships"]["owner"]["data"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(owner["id"]) if isinstance(owner, dict) and "id" in owner else None


def _int(value: Any) -> int | None:
    return int(value) if str(value).isdigit() else None


@dataclass(frozen=True, slots=True)
class Reply:
    """One answered request: the response, or the error that means what to do."""

    response: Response | None
    error: DeliveryError | None


class Caller:
    """Sends one request at a time, each on a permit within enrollment's share of the user's
    quota; the gate hears every answer (or its absence) once."""

    def __init__(self, client: OutreachClient, gate: QuotaGate, *, fallback_pause_s: float) -> None:
        self.client = client
        self.gate = gate
        self.fallback_pause_s = fallback_pause_s

    async def permit(self, dest: str, conn: Connection, share: float) -> Grant:
        """One permit, or the wait until there is one."""
        return await self.gate.acquire(
            conn.user,
            1,
            limit=conn.rate_limit,
            reserve_share=conn.reserve_share,
            share=Share(f"{dest}.enroll", share),
        )

    async def send(
        self,
        conn: Connection,
        access: str,
        grant: Grant,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """``method path`` on ``grant``'s permit; transport failures are a `Retryable`."""
        sent_s = time.time()
        url = f"{self.client.api_url}/{path}"
        try:
            resp = await self.client.call(access, method, url, params=params, body=body)
        except Retryable as exc:
            await self.gate.observe(conn.user, no_answer(), sent_s=sent_s, grant=grant.id)
            return Reply(None, exc)
        except BaseException:
            await self.gate.observe(conn.user, no_answer(), sent_s=sent_s, grant=grant.id)
            raise
        answer: Answer = parse_answer(
            resp.status, resp.headers, resp.body, fallback_pause_s=self.fallback_pause_s
        )
        await self.gate.observe(conn.user, answer, sent_s=sent_s, grant=grant.id)
        return Reply(resp, classify(answer))
