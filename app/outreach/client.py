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

    @property
    def api_url(self) -> str:
        """The API base every path is relative to."""
        return self._api_url

    async def call(
        self,
        access_token: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Any other JSON:API request (``url`` absolute); transport failures become
        :class:`Retryable`, every answer is returned as it came."""
        headers = {"Authorization": f"Bearer {access_token}", "Accept": JSONAPI}
        if body is not None:
            headers["Content-Type"] = JSONAPI
        try:
            async with self._session.request(
                method, url, params=params, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                return Response(resp.status, dict(resp.headers), await resp.text())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Retryable(None, f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

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
