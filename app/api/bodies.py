"""Reading a request body: its content coding undone only here, after the route's
authentication, on a thread, and never past ``MAX_BODY_BYTES``.

aiohttp would otherwise inflate ``Content-Encoding: gzip`` bodies itself as the bytes arrive,
on the event loop and before any handler runs: a small gzip bomb then stalls every other
request (health checks included), even unauthenticated. ``make_app`` turns that off
(``auto_decompress=False``), so a body arrives here as sent.

A body declared longer than ``MAX_BODY_BYTES`` is refused before a byte of it is read, one
that stalls is given up after ``API_BODY_TIMEOUT_S``, and a client that goes away mid-body is
one INFO line: none of them is the service's failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import zlib
from typing import Any, cast

from aiohttp import web

from app.api.jsonapi import error_response, unsupported_media_type

log = logging.getLogger(__name__)

#: Content codings we undo, with zlib's window bits for each (None: as sent).
CODINGS: dict[str, int | None] = {
    "identity": None,
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


#: The largest body, before and after its content coding is undone (``MAX_BODY_BYTES``).
MAX_BODY = web.AppKey("max_body_bytes", int)
#: Seconds a body may take to arrive, from the end of the headers (``API_BODY_TIMEOUT_S``).
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)


class BodyRefused(Exception):
    """The body cannot be used; ``response`` says why (400, 408, 413, 415)."""

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
    max_bytes = request.app[MAX_BODY]
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        # At once, not after the bytes have arrived; the connection is not reused.
        refused = _too_large(f"the body is declared {declared} bytes long, over {max_bytes}")
        refused.force_close()
        raise BodyRefused(refused)
    raw = await _arrived(request)
    wbits = CODINGS[coding]
    if wbits is None or not raw:
        return raw
    if coding == "deflate" and not _zlib_header(raw):
        wbits = -zlib.MAX_WBITS  # raw DEFLATE, as some clients send for "deflate"
    return await asyncio.to_thread(inflate, raw, wbits=wbits, max_bytes=max_bytes)


async def _arrived(request: web.Request) -> bytes:
    timeout_s = request.app.get(BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()  # bounded by client_max_size (413 from the middleware)
    except TimeoutError:
        log.info("%s %s: body not received within %g s", request.method, request.path, timeout_s)
        late = error_response(
            408, "Request timeout", f"the body did not arrive within {timeout_s:g} s"
        )
        late.force_close()
        raise BodyRefused(late) from None
    except ConnectionResetError:  # the client closed the connection; nobody reads an answer
        log.info("%s %s: client went away before the body's end", request.method, request.path)
        raise BodyRefused(error_response(400, "Incomplete body", "connection closed")) from None


def inflate(raw: bytes, *, wbits: int, max_bytes: int) -> bytes:
    """``raw`` inflated, stopping as soon as the result would exceed ``max_bytes``. A gzip
    body may hold several members one after another (RFC 1952 2.2): they inflate to their
    concatenation, bounded as a whole."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(raw, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise BodyRefused(_corrupt(f"the compressed body is not valid ({exc})")) from None
        if len(out) > max_bytes:
            raise BodyRefused(_too_large(f"the inflated body is larger than {max_bytes} bytes"))
        if not inflater.eof:
            raise BodyRefused(_corrupt("the compressed body ends before its end marker"))
        raw = inflater.unused_data
        if not raw:
            return bytes(out)
        if wbits != CODINGS["gzip"]:
            raise BodyRefused(_corrupt("bytes follow the end of the compressed body"))


def _too_large(detail: str) -> web.Response:
    return error_response(413, "Body too large", detail)


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


#: ``read_json``'s default: the body is required.
REQUIRED: Any = object()


async def read_json(request: web.Request, *, default: Any = REQUIRED) -> Any:
    """The request's JSON body; ``BodyRefused`` (400, 413, 415) naming what is wrong with it.
    With a ``default``, an empty body reads as it. A body, and any Content-Type, must be
    declared JSON: an HTML form (another site's, riding on a browser's cached Basic-auth
    credentials) can only send form encodings or text/plain."""
    optional = default is not REQUIRED
    declared = "Content-Type" in request.headers
    if declared or not optional:
        refused = unsupported_media_type(request)
        if refused is not None:
            raise BodyRefused(refused)
    text = body_text(request, await read_body(request))
    if optional and not text.strip():
        return default
    if not declared:
        raise BodyRefused(cast("web.Response", unsupported_media_type(request)))
    return parse_json(text)


def parse_json(text: str) -> Any:
    """``text`` as JSON; ``BodyRefused`` (400) saying where and why it is not usable."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        detail = f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except ValueError:  # the only other one: an integer longer than int_max_str_digits
        most = sys.get_int_max_str_digits()
        detail = f"not usable JSON: an integer has more than {most} digits"
    except RecursionError:
        detail = "not usable JSON: arrays or objects nested too deeply"
    raise BodyRefused(error_response(400, "Bad request body", detail))
