"""The destinations admin API: ``/v1/admin/destinations[/{destination_id}]``.

Every route requires the admin key (``app.api.adminauth``). Bodies are one destination as in the
configuration file; PATCH takes a JSON Merge Patch (RFC 7396). Answers carry the destination
(or the list) under ``data``, as the connections routes do. Errors are JSON:API-style,
each naming the bad member with ``source.pointer``, a JSON Pointer into the request body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from app.admin.destinations import Conflict, DestinationAdmin, Invalid, NotFound
from app.api.adminauth import admin_refusal
from app.api.bodies import BodyRefused, read_json
from app.api.jsonapi import error_object, error_response, errors_response, pointer
from app.config.destinations import Destination
from app.core.errors import UnreadableRecord
from app.core.settings import Settings
from app.store.registry import Registry

BASE = "/v1/admin/destinations"
ITEM = BASE + "/{destination_id}"
_Handler = Callable[[web.Request], Awaitable[web.Response]]


class DestinationsApi:
    def __init__(self, admin: DestinationAdmin, settings: Settings) -> None:
        self._admin = admin
        self._settings = settings

    async def list(self, request: web.Request) -> web.Response:
        dests, broken = await self._admin.catalog()
        doc: dict[str, Any] = {"data": [d.model_dump(mode="json") for d in dests]}
        if broken:
            # Records that cannot be read: listed apart, so the good ones still show.
            doc["meta"] = {"broken": [b.as_dict() for b in broken]}
        return web.json_response(doc)

    async def create(self, request: web.Request) -> web.Response:
        dest = await self._admin.create(await read_json(request))
        headers = {"Location": f"{BASE}/{dest.id}"}
        return _one(dest, status=201, headers=headers)

    async def show(self, request: web.Request) -> web.Response:
        return _one(await self._admin.get(_id(request)))

    async def replace(self, request: web.Request) -> web.Response:
        return _one(await self._admin.replace(_id(request), await read_json(request)))

    async def patch(self, request: web.Request) -> web.Response:
        return _one(await self._admin.patch(_id(request), await read_json(request)))

    async def delete(self, request: web.Request) -> web.Response:
        force = request.query.get("force", "false").lower()
        if force not in ("true", "false"):
            return error_response(400, "Bad parameter", "force must be true or false")
        gone = await self._admin.delete(_id(request), force=force == "true")
        discarded = {
            "pending": gone.pending,
            "in_flight": gone.in_flight,
            "failures": gone.failures,
        }
        return web.json_response({"data": {"id": _id(request), "discarded": discarded}})

    def guarded(self, handler: _Handler) -> _Handler:
        """The admin check, and the admin layer's errors as JSON:API answers."""

        async def run(request: web.Request) -> web.Response:
            refusal = admin_refusal(request, self._settings)
            if refusal is not None:
                return refusal
            try:
                return await handler(request)
            except BodyRefused as exc:
                return exc.response
            except Invalid as exc:
                errs = [_invalid(loc, msg) for loc, msg in exc.problems]
                return errors_response(422, errs)
            except NotFound as exc:
                return error_response(404, "Unknown destination", str(exc))
            except Conflict as exc:
                return error_response(409, "Conflict", str(exc))
            except UnreadableRecord as exc:
                detail = f"{exc}; replace it (PUT) or delete it (DELETE)"
                return error_response(409, "Destination record unreadable", detail)

        return run


def _one(
    dest: Destination, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"data": dest.model_dump(mode="json")}, status=status, headers=headers)


def _invalid(loc: tuple[int | str, ...], msg: str) -> dict[str, Any]:
    where = pointer(loc)
    detail = f"{where.lstrip('/') or 'body'}: {msg}"
    # "" (the whole body) when the problem is the body itself.
    return error_object(422, "Invalid destination", detail, pointer=where)


def _id(request: web.Request) -> str:
    return request.match_info["destination_id"]


def add_routes(
    app: web.Application, *, client: aioredis.Redis, settings: Settings, registry: Registry
) -> None:
    """Register the destinations admin routes; edits also refresh ``registry`` (this
    process's ingestion sees them at once, other processes within its cache time)."""
    admin = DestinationAdmin(client, settings.keys, on_change=registry.forget)
    api = DestinationsApi(admin, settings)
    app.router.add_get(BASE, api.guarded(api.list))
    app.router.add_post(BASE, api.guarded(api.create))
    app.router.add_get(ITEM, api.guarded(api.show))
    app.router.add_put(ITEM, api.guarded(api.replace))
    app.router.add_patch(ITEM, api.guarded(api.patch))
    app.router.add_delete(ITEM, api.guarded(api.delete))
