"""The Outreach API client: one aiohttp session per process, errors wrapped at this boundary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.core.errors import Retryable
from app.outreach.payload import JSONAPI, prospect_patch_bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: str


class OutreachClient:
    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, timeout_s: float) -> None:
        self._session = session
        self._api_url = api_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def patch_prospect(
        self, access_token: str, prospect: int, fields: Mapping[str, Any]
    ) -> Response:
        """Send one prospect's fields; transport failures become :class:`Retryable`."""
        headers = {
            "Authorization": f"Bearer {access_token}",
            "Content-Type": JSONAPI,
            "Accept": JSONAPI,
        }
        url = f"{self._api_url}/prospects/{prospect}"
        body = prospect_patch_bytes(prospect, fields)
        try:
            async with self._session.patch(
                url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                text = await resp.text()
                return Response(resp.status, dict(resp.headers), text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Retryable(None, f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
