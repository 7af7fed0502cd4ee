"""The OpenAPI document matches the real app: every registered route is described (and every
described route exists), and real error answers fit the documented schemas."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from app.admin.producer_keys import ProducerKeys
from app.api.app import make_app
from app.api.openapi import document
from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import (
    TEST_REDIS_URL,
    e2e_config,
    free_port,
    make_settings,
    profile,
    settings_env,
)

ADMIN_KEY = "openapi-test-admin-key"
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _shape(path: str) -> str:
    """Path parameters' names are the document's business; their places must agree."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def registered(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if route.method == "HEAD" or path.startswith("/_"):
            continue
        routes.add((route.method, _shape(path)))
    return routes


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), _shape(path))
        for path, item in doc["paths"].items()
        for method in item
        if method.upper() in METHODS
    }


@pytest.fixture
def app(prefix: str) -> web.Application:
    return make_app(make_settings(settings_env(prefix, None, ADMIN_API_KEY=ADMIN_KEY)))


def test_every_registered_route_is_documented(app: web.Application) -> None:
    missing = registered(app) - documented(document())
    assert not missing, f"routes without an OpenAPI description: {sorted(missing)}"


def test_every_documented_route_is_registered(app: web.Application) -> None:
    gone = documented(document()) - registered(app)
    assert not gone, f"described in app/api/openapi.py but not registered: {sorted(gone)}"


def test_the_document_is_consistent() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node: Any = doc
        for part in ref.split("/"):
            node = node[part]  # every $ref resolves
    schemes = doc["components"]["securitySchemes"]
    for path, item in doc["paths"].items():
        params = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert params == set(re.findall(r"\{([^}]+)\}", path)), path
        for method, op in item.items():
            if method.upper() not in METHODS:
                continue
            assert op["responses"] and op.get("operationId"), (method, path)
            for requirement in op.get("security", []):
                assert set(requirement) <= set(schemes), (method, path)
    ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for m, op in item.items()
        if m.upper() in METHODS
    ]
    assert len(ids) == len(set(ids))


# A small JSON Schema check: enough for the schemas the document uses.


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def conforms(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    schema = _resolve(schema)
    if "oneOf" in schema:
        fits = [s for s in schema["oneOf"] if not conforms(value, s, where)]
        return [] if len(fits) == 1 else [f"{where}: fits {len(fits)} of oneOf"]
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        ok = any(
            isinstance(value, _TYPES[t])
            and not (t in ("integer", "number") and isinstance(value, bool))
            for t in allowed
        )
        if not ok:
            return [f"{where}: {value!r} is not {types}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in enum")
    if isinstance(value, dict):
        problems += [f"{where}/{k}: required" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                problems += conforms(v, props[k], f"{where}/{k}")
            elif extra is False:
                problems.append(f"{where}/{k}: not allowed")
            elif isinstance(extra, dict):
                problems += conforms(v, extra, f"{where}/{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{where}: too few items")
        for i, item in enumerate(value):
            problems += conforms(item, schema.get("items", {}), f"{where}/{i}")
    return problems


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    resp = _resolve(document()["paths"][path][method]["responses"][str(status)])
    return resp["content"]["application/json"]["schema"]


@pytest.fixture
async def base(app: web.Application, prefix: str, rclient: redis.Redis) -> AsyncIterator[str]:
    publish_sync(rclient, Keys(prefix), e2e_config())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_real_answers_fit_the_documented_schemas(base: str, prefix: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    form = {**admin, "Content-Type": "text/plain"}
    client = aioredis.from_url(TEST_REDIS_URL)
    _, elsewhere = await ProducerKeys(client, Keys(prefix)).create("elsewhere", ["other"])
    await client.aclose()
    scoped = {"X-API-Key": elsewhere}
    ingest = "/v1/destinations/{destination_id}/profiles"
    item = "/v1/admin/destinations/{destination_id}"
    e2e = e2e_config().destinations[0].model_dump(mode="json")
    cases: list[tuple[str, str, dict[str, str], Any, str, str, int]] = [
        ("POST", "/v1/destinations/e2e/profiles", {}, profile("1"), ingest, "post", 401),
        ("POST", "/v1/destinations/e2e/profiles", admin, profile("1"), ingest, "post", 202),
        ("POST", "/v1/destinations/e2e/profiles", admin, profile("x"), ingest, "post", 422),
        ("POST", "/v1/destinations/nope/profiles", admin, profile("1"), ingest, "post", 404),
        ("POST", "/v1/destinations/e2e/profiles", scoped, profile("1"), ingest, "post", 403),
        ("POST", "/v1/admin/destinations", admin, e2e, "/v1/admin/destinations", "post", 409),
        ("POST", "/v1/destinations/e2e/profiles", admin, b"", ingest, "post", 400),
        ("GET", "/v1/admin/destinations", {}, None, "/v1/admin/destinations", "get", 401),
        ("GET", "/v1/admin/destinations", admin, None, "/v1/admin/destinations", "get", 200),
        ("GET", "/v1/admin/destinations/e2e", admin, None, item, "get", 200),
        ("GET", "/v1/admin/destinations/nope", admin, None, item, "get", 404),
        ("PATCH", "/v1/admin/destinations/e2e", admin, {"audiences": {"a": 0}}, item, "patch", 422),
        ("PUT", "/v1/admin/destinations/e2e", admin, b"{", item, "put", 400),
        ("PUT", "/v1/admin/destinations/e2e", form, e2e, item, "put", 415),
    ]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/openapi.json") as r:  # served, without any key
            assert r.status == 200 and await r.json() == json.loads(json.dumps(document()))
        for method, url, headers, body, path, op, status in cases:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body)
            async with s.request(method, base + url, headers=headers, data=data) as r:
                assert r.status == status, (method, url, await r.text())
                assert str(status) in document()["paths"][path][op]["responses"]
                answer = await r.json()
            problems = conforms(answer, response_schema(path, op, status))
            assert not problems, (method, url, problems)
