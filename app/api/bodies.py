"""Reading a request body: its content coding undone only here, after the route's
authentication, on a thread, and never past ``MAX_BODY_BYTES``.

aiohttp would otherwise inflate ``Content-Encoding: gzip`` bodies itself as the bytes arrive,
on the event loop and before any handler runs: a small gzip bomb then stalls every other
request (health checks included), even unauthenticated. ``make_app`` turns that off
(``auto_decompress=False``), so a body arrives here as sent.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from app.api.jsonapi import error_response

#: Content codings we undo, with zlib's window bits for each (None: as sent).
CODINGS: dict[str, int | None] = {
    "identity": None,
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


#: The largest body, before and after its content coding is undone (``MAX_BODY_BYTES``).
MAX_BODY = web.AppKey("max_body_bytes", int)


class BodyRefused(Exception):
    """The body cannot be used; ``response`` says why (400, 413, 415)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.reason)
        self.response = response


async def read_body(request: web.Request) -> bytes:
    """The body's bytes with its content coding undone (at most ``MAX_BODY`` of them)."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if coding not in CODINGS:
        raise BodyRefused(
            error_response(
                415,
                "Unsupported content encoding",
                f"Content-Encoding {coding[:40]!r} is not supported: send gzip, deflate or none",
            )
        )
    raw = await request.read()  # bounded by client_max_size (413 from the middleware)
    wbits = CODINGS[coding]
    if wbits is None or not raw:
        return raw
    if coding == "deflate" and not _zlib_header(raw):
        wbits = -zlib.MAX_WBITS  # raw DEFLATE, as some clients send for "deflate"
    max_bytes = request.app[MAX_BODY]
    return await asyncio.to_thread(inflate, raw, wbits=wbits, max_bytes=max_bytes)


def inflate(raw: bytes, *, wbits: int, max_bytes: int) -> bytes:
    """``raw`` inflated, stopping as soon as the result would exceed ``max_bytes``."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise BodyRefused(_corrupt(f"the compressed body is not valid ({exc})")) from None
    if len(out) > max_bytes:
        raise BodyRefused(
            error_response(
                413, "Body too large", f"the inflated body is larger than {max_bytes} bytes"
            )
        )
    if not inflater.eof:
        raise BodyRefused(_corrupt("the compressed body ends before its end marker"))
    if inflater.unused_data:
        raise BodyRefused(_corrupt("bytes follow the end of the compressed body"))
    return out


def _zlib_header(raw: bytes) -> bool:
    return len(raw) >= 2 and raw[0] & 0x0F == 8 and ((raw[0] << 8) | raw[1]) % 31 == 0


def _corrupt(detail: str) -> web.Response:
    return error_response(400, "Bad content encoding", detail)


def body_text(request: web.Request, raw: bytes) -> str:
    """``raw`` decoded with the declared charset (UTF-8 if none)."""
    try:
        return raw.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):  # LookupError: a charset Python does not know
        raise BodyRefused(error_response(400, "Bad encoding", "the body must be UTF-8")) from None
