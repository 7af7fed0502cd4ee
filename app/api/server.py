"""Serving the API: aiohttp's server, minus its noise about malformed requests.

aiohttp answers a request it cannot parse (a bad request line, a control character in a
header) itself, before any route or middleware: it logs an ERROR with a traceback and sends
the offending raw line back in the 400. That is alert noise for what any scanner sends, and
the raw line may be ``Authorization: Bearer <key>``. Here such a request is logged at INFO in
one line naming only its kind, and answered with a fixed JSON:API 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from typing import Any

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
    def __call__(self) -> RequestHandler:
        return _QuietHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests without echoing them."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same class layout, one method overridden: aiohttp offers no other way to choose
        # the connection handler.
        server.__class__ = _QuietServer
        return server


def serve(app: web.Application, *, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (as ``web.run_app`` does)."""

    async def run() -> None:
        runner = ApiRunner(app, handle_signals=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            say(f"======== Running on http://{host}:{port} ========")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(run())
