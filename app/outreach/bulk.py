"""Outreach's Bulk API: modify many prospects in one call, then follow the Batch it returns.

Every call answers a :class:`BulkAnswer`: Outreach's answer as read once (which the caller
reports to the quota gate) and either the parsed value or the error to act on. A bulk call
without ids would modify *every* prospect of the account; :class:`ProspectIds` cannot be
empty, and :class:`BulkModification` needs one, so such a call cannot be built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.core.errors import DeliveryError
from app.outreach.answers import Answer, classify, no_answer, parse_answer
from app.outreach.client import OutreachClient, Response

T = TypeVar("T")

BULK_MODIFY = "/batches/actions/prospectsBulkModify"
#: Names the body form uses itself; a field of that name would be read as the form.
RESERVED = frozenset({"ids", "fieldName", "fieldValue", "field", "value"})
FINISHED = frozenset({"finished", "complete", "completed", "done", "succeeded", "success"})
CANCELED = frozenset({"canceled", "cancelled", "aborted"})
FAILED = frozenset({"failed", "error", "errored"})


class ProspectIds(tuple[int, ...]):
    """Prospect ids of one bulk call: at least one, each a positive integer, no repeats."""

    __slots__ = ()

    def __new__(cls, ids: Iterable[int]) -> ProspectIds:
        values = tuple(ids)
        if not values:
            raise ValueError("a bulk call must name at least one prospect id")
        if any(isinstance(i, bool) or not isinstance(i, int) or i <= 0 for i in values):
            raise ValueError("prospect ids must be positive integers")
        if len(set(values)) != len(values):
            raise ValueError("prospect ids must not repeat")
        return super().__new__(cls, values)


@dataclass(frozen=True, slots=True)
class BulkModification:
    """The same field values for every listed prospect."""

    ids: ProspectIds
    fields: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.ids, ProspectIds):
            raise TypeError("ids must be ProspectIds (never empty)")
        if not self.fields:
            raise ValueError("a bulk modification must set at least one field")
        reserved = RESERVED & set(self.fields)
        if reserved:
            raise ValueError(f"field names reserved by the bulk body: {sorted(reserved)}")

    def body(self) -> bytes:
        """The body: every field with its value, and the ids (never the filter form)."""
        attributes = {**self.fields, "ids": list(self.ids)}
        return json.dumps({"data": {"attributes": attributes}}, separators=(",", ":")).encode()


class UnexpectedAnswer(DeliveryError):
    """A 2xx answer whose body is not the documented shape: nothing in it can be trusted."""


@dataclass(frozen=True, slots=True)
class BulkBatch:
    """Where a bulk call's batch stands; state names are Outreach's (not enumerated)."""

    id: int
    state: str
    total: int
    pending: int
    failures: int
    finished: bool
    canceled: bool


@dataclass(frozen=True, slots=True)
class BatchItem:
    """What became of one prospect of a batch; ``info`` is Outreach's reason when it failed."""

    prospect: int
    state: str
    failed: bool
    info: str | None


@dataclass(frozen=True, slots=True)
class ItemsPage:
    items: tuple[BatchItem, ...]
    next_url: str | None


@dataclass(frozen=True, slots=True)
class BulkAnswer(Generic[T]):
    """One answer: ``value`` when Outreach took the call, else ``error``; ``reply`` is the
    answer as read once (rate-limit headers and all) for the quota gate."""

    response: Response
    reply: Answer
    value: T | None = None
    error: DeliveryError | None = field(default=None)


class BulkClient:
    """Bulk calls over an :class:`OutreachClient`'s session."""

    def __init__(self, client: OutreachClient, *, fallback_pause_s: float = 60.0) -> None:
        self._client = client
        self._base = client.api_url
        self._fallback_pause_s = fallback_pause_s

    async def modify(self, access_token: str, mod: BulkModification) -> BulkAnswer[BulkBatch]:
        """Start a bulk modification (confirmation skipped: the ids are named)."""
        params = {"actionParams[skipConfirmation]": "true"}
        resp = await self._client.call(
            access_token, "POST", self._base + BULK_MODIFY, params=params, body=mod.body()
        )
        return self._answer(resp, parse_batch)

    async def batch(self, access_token: str, batch_id: int) -> BulkAnswer[BulkBatch]:
        """Where a batch stands."""
        resp = await self._client.call(access_token, "GET", f"{self._base}/batches/{batch_id}")
        return self._answer(resp, parse_batch)

    async def cancel(self, access_token: str, batch_id: int) -> BulkAnswer[BulkBatch]:
        """Stop a batch; records already done stay done."""
        url = f"{self._base}/batches/{batch_id}/actions/cancel"
        return self._answer(await self._client.call(access_token, "POST", url), parse_batch)

    async def items(
        self, access_token: str, batch_id: int, *, page_size: int, url: str | None = None
    ) -> BulkAnswer[ItemsPage]:
        """One page of a batch's items: the first, or the one ``url`` (a ``next`` link) names."""
        if url is None:
            params: dict[str, str] | None = {
                "filter[batch][id]": str(batch_id),
                "page[size]": str(page_size),
            }
            url = f"{self._base}/batchItems"
        else:
            params = None
            if not url.startswith(self._base + "/"):
                # Never send the token anywhere else than the API it was issued for.
                refused = UnexpectedAnswer(0, "next link leaves the API")
                return BulkAnswer(Response(0, {}, ""), no_answer(), error=refused)
        resp = await self._client.call(access_token, "GET", url, params=params)
        return self._answer(resp, lambda doc: parse_items(doc, batch_id))

    def _answer(self, resp: Response, parse: Any) -> BulkAnswer[Any]:
        reply = parse_answer(
            resp.status, resp.headers, resp.body, fallback_pause_s=self._fallback_pause_s
        )
        err = classify(reply)
        if err is not None:
            return BulkAnswer(resp, reply, error=err)
        try:
            return BulkAnswer(resp, reply, value=parse(json.loads(resp.body)))
        except (ValueError, KeyError, TypeError) as exc:
            unexpected = UnexpectedAnswer(resp.status, f"unexpected answer: {exc}")
            return BulkAnswer(resp, reply, error=unexpected)


def parse_batch(doc: Any) -> BulkBatch:
    """A Batch resource; raises ValueError/KeyError/TypeError for any other shape."""
    data = doc["data"]
    attrs = data["attributes"]
    if data.get("type") not in (None, "batch") or not isinstance(attrs, dict):
        raise ValueError("not a batch resource")
    state = str(attrs.get("state") or "").lower()
    total, pending = _count(attrs, "total"), _count(attrs, "pending")
    failures = _count(attrs, "failures")
    canceled = bool(attrs.get("canceledAt")) or state in CANCELED
    finished = not canceled and (bool(attrs.get("finishedAt")) or state in FINISHED)
    if state in FAILED:
        canceled = True
    return BulkBatch(_id(data["id"]), state, total, pending, failures, finished, canceled)


def parse_items(doc: Any, batch_id: int) -> ItemsPage:
    """A page of Batch Items of ``batch_id``; the prospect of each is read from its ``data``."""
    rows = doc["data"]
    if not isinstance(rows, list):
        raise TypeError("batch items must be a list")
    items = tuple(_item(row, batch_id) for row in rows)
    links = doc.get("links") or {}
    nxt = links.get("next") if isinstance(links, dict) else None
    return ItemsPage(items, nxt if isinstance(nxt, str) and nxt else None)


def _item(row: Any, batch_id: int) -> BatchItem:
    attrs = row["attributes"]
    if _id(attrs.get("batchId", batch_id)) != batch_id:
        raise ValueError("an item of another batch")
    failed = attrs["failed"]
    if not isinstance(failed, bool):
        raise TypeError("failed must be a boolean")
    data = json.loads(attrs["data"]) if isinstance(attrs["data"], str) else attrs["data"]
    info = attrs.get("info")
    return BatchItem(
        _id(data["id"]), str(attrs.get("state") or ""), failed, None if info is None else str(info)
    )


def _id(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).isdigit():
        raise ValueError(f"not an id: {raw!r}")
    return int(raw)


def _count(attrs: Mapping[str, Any], name: str) -> int:
    raw = attrs.get(name, 0)
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError(f"{name} must be a count, not {raw!r}")
    return raw
