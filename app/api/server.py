"""Serving the API: aiohttp's server, minus its noise about malformed requests.

aiohttp answers a request it cannot parse (a bad request line, a control character in a
header) itself, before any route or middleware: it logs an ERROR with a traceback and sends
the offending raw line back in the 400. That is alert noise for what any scanner sends, and
the raw line may be ``Authorization: Bearer <key>``. Here such a request is logged at INFO in
one line naming only its kind, and answered with a fixed JSON:API 400.

aiohttp also waits as long as a client likes for a request's headers (slowloris): here a
connection whose request line and headers have not all arrived ``header_timeout_s`` after
its first byte (or after it opened) is closed. The body's deadline is app/api/bodies.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

BAD_REQUEST = json.dumps(
    {
        "errors": [
            {
                "status": "400",
                "title": "Malformed request",
                "detail": "the request line or a header is not valid HTTP/1.1",
            }
        ]
    }
)


#: Seconds an idle keep-alive connection stays open (aiohttp's own default is an hour). Longer
#: than the usual load balancer's idle timeout (60 s), so that the balancer closes first.
KEEPALIVE_S = 75.0


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger; a request it could not parse is an INFO line, no traceback
    and nothing of the request (the parser's message quotes the raw bytes)."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            remote = args[0] if args else "?"
            name = type(exc_info).__name__
            self.logger.info("malformed request from %s refused (%s)", remote, name)
            return
        super().exception(msg, *args, exc_info=exc_info, **kw)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs


server_log = _ServerLog(logging.getLogger("aiohttp.server"))


class _QuietHandler(RequestHandler):
    header_timeout_s: float | None = None  # set by the server before the connection opens
    _deadline_set_at = -1  # the count of requests parsed when the last deadline was set

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_deadline()

    def data_received(self, data: bytes) -> None:
        # Waiting for the next request (none parsed but not yet handled): these bytes start it.
        idle = self._waiter is not None and not self._waiter.done()
        parsed = self._request_count
        super().data_received(data)
        if idle and data:
            self._header_deadline(parsed)

    def _header_deadline(self, parsed: int = 0) -> None:
        # One deadline per request, however many pieces its headers come in.
        if self.header_timeout_s is not None and parsed != self._deadline_set_at:
            self._deadline_set_at = parsed
            self._loop.call_later(self.header_timeout_s, self._headers_late, parsed)

    def _headers_late(self, parsed: int) -> None:
        # Still no whole request since the deadline was set, and the connection still open.
        if self._request_count == parsed and self.transport is not None:
            server_log.logger.info(
                "connection from %s closed: no whole request line and headers within %g s",
                self.peername,
                self.header_timeout_s,
            )
            self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        if isinstance(exc, HttpProcessingError) and status == 400:
            # The parser's message quotes the raw request: never echoed.
            response = web.Response(status=400, text=BAD_REQUEST, content_type="application/json")
            response.force_close()
        return response


class _QuietServer(web.Server):
    header_timeout_s: float | None = None

    def __call__(self) -> RequestHandler:
        handler = _QuietHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        return handler


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests without echoing them
    and are closed when their headers take longer than ``header_timeout_s``."""

    def __init__(
        self, app: web.Application, *, header_timeout_s: float | None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same class layout, one method overridden: aiohttp offers no other way to choose
        # the connection handler.
        server.__class__ = _QuietServer
        cast("_QuietServer", server).header_timeout_s = self._header_timeout_s
        return server


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    header_timeout_s: float,
    say: Callable[[str], None],
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (as ``web.run_app`` does)."""

    async def run() -> None:
        runner = ApiRunner(
            app,
            handle_signals=True,
            header_timeout_s=header_timeout_s,
            keepalive_timeout=KEEPALIVE_S,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            say(f"======== Running on http://{host}:{port} ========")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(run())
