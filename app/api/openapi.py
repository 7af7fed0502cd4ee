"""The HTTP API described as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand next to the routes; tests/test_openapi.py fails when a route is registered
but not described here (or described but gone), and checks error answers against it.
"""

from __future__ import annotations

from functools import cache

from aiohttp import web

from app.api.openapi_schemas import JSON, SLUG, Doc, components, json_content, ref
from app.core.keys import METRICS_RETENTION_HOURS

#: Never HTTP Basic: a browser resends it by itself, even for another site's form.
PRODUCER: list[Doc] = [{"producerKey": []}, {"producerApiKey": []}, {"adminKey": []}]
ADMIN: list[Doc] = [{"adminKey": []}, {"adminBasic": []}]
#: The ``hours`` bound the document states: the serving app's METRICS_RETENTION_HOURS.
MAX_HOURS = web.AppKey("openapi_max_hours", int)


def _errors(*codes: int) -> Doc:
    out: Doc = {}
    for code in codes:
        out[str(code)] = {"$ref": f"#/components/responses/Error{code}"}
    return out


def _html(description: str) -> Doc:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _path_param(name: str, description: str, *, pattern: str | None = None) -> Doc:
    schema: Doc = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _page_503() -> Doc:
    retry_after = {"Retry-After": {"schema": {"type": "integer"}}}
    return {**_html("Redis cannot be reached; try again"), "headers": retry_after}


def _hours(max_hours: int, description: str) -> Doc:
    schema = {"type": "integer", "minimum": 1, "maximum": max_hours}
    return _query("hours", description, schema)


def _query(name: str, description: str, schema: Doc, *, required: bool = False) -> Doc:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


DEST_PARAM = _path_param("destination_id", "The destination's id", pattern=SLUG)
CONN_PARAM = _path_param("connection_id", "The connection's id", pattern=SLUG)


def _producer_paths(max_hours: int) -> Doc:
    ndjson = {"type": "string", "description": "One profile (JSON object) per line"}
    body = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "oneOf": [
                        ref("Profile"),
                        {
                            "type": "object",
                            "required": ["profiles"],
                            "properties": {"profiles": {"type": "array", "items": ref("Profile")}},
                        },
                    ]
                }
            },
            "application/x-ndjson": {"schema": ndjson},
            "application/jsonl": {"schema": ndjson},
        },
    }
    return {
        "/v1/destinations/{destination_id}/profiles": {
            "parameters": [DEST_PARAM],
            "post": {
                "operationId": "ingestProfiles",
                "tags": ["producers"],
                "summary": 'Send profiles (one, {"profiles": [...]}, or NDJSON)',
                "description": "Each profile is accepted, excluded (no usable OutreachId) or "
                "rejected (the reason names the field); one bad profile never rejects another. "
                "application/json is one document: if it does not parse, the answer is 400 "
                "naming the position and nothing is stored. NDJSON is one profile per line: a "
                "line that does not parse rejects only that profile. Bodies may be sent with "
                "Content-Encoding gzip or deflate. Requests a browser marks as cross-site "
                "(Sec-Fetch-Site, Origin) are refused with 403.",
                "security": PRODUCER,
                "requestBody": body,
                "responses": {
                    "202": json_content(ref("IngestReport"), "At least one profile was accepted"),
                    "422": json_content(ref("IngestReport"), "No profile was accepted"),
                    **_errors(400, 401, 403, 404, 413, 415, 429, 503),
                },
            },
        },
        "/v1/destinations/{destination_id}/status": {
            "parameters": [DEST_PARAM],
            "get": {
                "operationId": "destinationStatus",
                "tags": ["producers"],
                "summary": "Backlog, counters and quota of a destination",
                "security": PRODUCER,
                "parameters": [
                    _hours(max_hours, "Windows of the recent-activity figures, in hours")
                ],
                "responses": {
                    "200": json_content(ref("DestinationStatus"), "The destination's state"),
                    **_errors(400, 401, 403, 404, 429, 503),
                },
            },
        },
    }


def _data(schema: Doc) -> Doc:
    """Successful admin answers carry their document under ``data``."""
    return {"type": "object", "required": ["data"], "properties": {"data": schema}}


def _listed(item: Doc) -> Doc:
    """A list under ``data``; the stored records that cannot be read under ``meta.broken``."""
    doc = _data({"type": "array", "items": item})
    doc["properties"]["meta"] = {
        "type": "object",
        "description": "Stored records that cannot be read (only when there are some)",
        "properties": {"broken": {"type": "array", "items": ref("BrokenRecord")}},
    }
    return doc


def _admin_destination_paths() -> Doc:
    dest = json_content(_data(ref("Destination")), "The destination as stored")
    body = {"required": True, "content": {JSON: {"schema": ref("Destination")}}}
    replacement = {"required": True, "content": {JSON: {"schema": ref("DestinationReplacement")}}}
    patch_schema = {
        "type": "object",
        "description": "JSON Merge Patch (RFC 7396) of a Destination: members given replace, "
        "objects merge, null removes a member (it returns to its default)",
    }
    patch = {
        "required": True,
        "content": {
            JSON: {"schema": patch_schema},
            "application/merge-patch+json": {"schema": patch_schema},
        },
    }
    deleted = {
        "type": "object",
        "required": ["id", "discarded"],
        "properties": {
            "id": {"type": "string"},
            "discarded": {
                "type": "object",
                "properties": {
                    k: {"type": "integer"} for k in ("pending", "in_flight", "failures")
                },
            },
        },
    }
    listing = _listed(ref("Destination"))
    op = {"tags": ["admin"], "security": ADMIN}
    return {
        "/v1/admin/destinations": {
            "get": {
                **op,
                "operationId": "listDestinations",
                "summary": "Every destination",
                "responses": {
                    "200": json_content(listing, "The destinations, by id"),
                    **_errors(401, 429, 503),
                },
            },
            "post": {
                **op,
                "operationId": "createDestination",
                "summary": "Create a destination (its id in the body)",
                "requestBody": body,
                "responses": {
                    "201": {**dest, "headers": {"Location": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 409, 413, 415, 422, 429, 503),
                },
            },
        },
        "/v1/admin/destinations/{destination_id}": {
            "parameters": [DEST_PARAM],
            "get": {
                **op,
                "operationId": "getDestination",
                "summary": "One destination",
                "description": "409 when its stored record cannot be read: replace it (PUT) "
                "or delete it.",
                "responses": {"200": dest, **_errors(401, 404, 409, 429, 503)},
            },
            "put": {
                **op,
                "operationId": "replaceDestination",
                "summary": "Replace a destination (the body's id, if any, must match)",
                "requestBody": replacement,
                "responses": {"200": dest, **_errors(400, 401, 404, 409, 413, 415, 422, 429, 503)},
            },
            "patch": {
                **op,
                "operationId": "patchDestination",
                "summary": 'Change some members, e.g. {"enabled": false} to disable',
                "requestBody": patch,
                "responses": {"200": dest, **_errors(400, 401, 404, 409, 413, 415, 422, 429, 503)},
            },
            "delete": {
                **op,
                "operationId": "deleteDestination",
                "summary": "Delete a destination and everything kept for it",
                "description": "Refused (409) while changes are pending or in flight or failure "
                "records remain, unless force=true, which discards them (the answer counts them).",
                "parameters": [
                    _query("force", "Discard the backlog", {"type": "boolean", "default": False})
                ],
                "responses": {
                    "200": json_content(_data(deleted), "Deleted; what was discarded"),
                    **_errors(400, 401, 404, 409, 429, 503),
                },
            },
        },
    }


def _connection_paths() -> Doc:
    conn = {
        "type": "object",
        "description": "A connection's metadata, state (active, reauth_required), token expiry "
        "and the destinations using it; never tokens",
        "required": ["id"],
        "properties": {"id": {"type": "string"}},
    }
    authorize = {
        "type": "object",
        "required": ["authorize_url"],
        "properties": {
            "authorize_url": {"type": "string", "format": "uri"},
            "expires_in_s": {"type": "integer"},
        },
    }
    user_body = {
        "required": False,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "user": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "description": "Outreach user label",
                        }
                    },
                }
            }
        },
    }
    op = {"tags": ["connections"], "security": ADMIN}
    return {
        "/v1/admin/connections": {
            "get": {
                **op,
                "operationId": "listConnections",
                "summary": "Every Outreach connection",
                "responses": {
                    "200": json_content(_listed(conn), "The connections"),
                    **_errors(401, 429, 503),
                },
            }
        },
        "/v1/admin/connections/{connection_id}": {
            "parameters": [CONN_PARAM],
            "get": {
                **op,
                "operationId": "getConnection",
                "summary": "One connection",
                "responses": {
                    "200": json_content(_data(conn), "The connection"),
                    **_errors(401, 404, 409, 429, 503),
                },
            },
            "delete": {
                **op,
                "operationId": "deleteConnection",
                "summary": "Remove a connection and its tokens",
                "description": "Refused (409) while destinations use it, unless force=true.",
                "parameters": [
                    _query("force", "Remove it even if in use", {"type": "boolean"}),
                ],
                "responses": {
                    "204": {"description": "Removed"},
                    **_errors(400, 401, 404, 409, 429, 503),
                },
            },
        },
        "/v1/admin/connections/{connection_id}/authorize": {
            "parameters": [CONN_PARAM],
            "post": {
                **op,
                "operationId": "authorizeConnection",
                "summary": "Start an OAuth authorization for the connection",
                "requestBody": user_body,
                "responses": {
                    "201": json_content(authorize, "Open authorize_url in a browser"),
                    **_errors(400, 401, 413, 415, 422, 429, 503),
                },
            },
        },
        "/oauth/start": {
            "get": {
                **op,
                "operationId": "oauthStart",
                "summary": "Redirect to Outreach's authorize page (single-use, expiring state)",
                "parameters": [
                    _query(
                        "connection",
                        "Connection id",
                        {"type": "string", "pattern": SLUG},
                        required=True,
                    ),
                    _query(
                        "user",
                        "The Outreach user's label (quota sharing)",
                        {"type": "string", "minLength": 1, "maxLength": 255},
                    ),
                ],
                "responses": {
                    "302": {"description": "To OUTREACH_AUTHORIZE_URL"},
                    "400": _html("A bad or missing parameter"),
                    "401": {"$ref": "#/components/responses/Error401"},
                    "403": _html("A browser navigation from another site (Sec-Fetch-Site)"),
                    **_errors(429),
                    "503": _html("OAuth is not configured (OUTREACH_CLIENT_ID/SECRET)"),
                },
            }
        },
        "/oauth/callback": {
            "get": {
                "tags": ["connections"],
                "operationId": "oauthCallback",
                "summary": "Where Outreach sends the user back; exchanges the code",
                "security": [],
                "parameters": [
                    _query("code", "The authorization code", {"type": "string"}),
                    _query(
                        "state", "The state /oauth/start issued", {"type": "string"}, required=True
                    ),
                    _query("error", "Set when Outreach did not authorize", {"type": "string"}),
                ],
                "responses": {
                    "200": _html("Connected"),
                    "400": _html("Unknown, expired or reused state, or no code"),
                    "403": _html("The user denied access"),
                    "502": _html("The token endpoint failed"),
                    "503": _html(
                        "Tokens could not be stored, OAuth is not configured, or Redis "
                        "cannot be reached"
                    ),
                },
            }
        },
    }


def _operator_paths(max_hours: int) -> Doc:
    text = {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "redis": {"type": "string"}},
    }
    open_ = {"tags": ["operations"], "security": []}
    hours = _hours(max_hours, "Window of the figures, in hours")
    page = {"tags": ["operations"], "security": ADMIN}
    return {
        "/healthz": {
            "get": {
                **open_,
                "operationId": "healthz",
                "summary": "The process answers",
                "responses": {"200": json_content(health, "Alive")},
            }
        },
        "/readyz": {
            "get": {
                **open_,
                "operationId": "readyz",
                "summary": "Redis answers",
                "responses": {
                    "200": json_content(health, "Ready"),
                    "503": json_content(health, "Not ready"),
                },
            }
        },
        "/docs/aep": {
            "get": {
                **open_,
                "operationId": "aepGuide",
                "summary": "The AEP guide (docs/aep.md): the Destination SDK package's "
                "documentation link",
                "responses": {
                    "200": {
                        "description": "Markdown, as text/plain unless text/markdown is asked for",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "text/markdown": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                **page,
                "operationId": "metrics",
                "summary": "Prometheus metrics (scrape with the admin key)",
                "responses": {"200": text, **_errors(401, 429)},
            }
        },
        "/status": {
            "get": {
                **page,
                "operationId": "statusPage",
                "summary": "Status page: every destination",
                "parameters": [hours],
                "responses": {
                    "200": _html("The page"),
                    "400": _html("A bad hours value"),
                    **_errors(401, 429),
                    "503": _page_503(),
                },
            }
        },
        "/status/{destination_id}": {
            "parameters": [DEST_PARAM],
            "get": {
                **page,
                "operationId": "destinationStatusPage",
                "summary": "Status page of one destination",
                "parameters": [hours],
                "responses": {
                    "200": _html("The page"),
                    "400": _html("A bad hours value"),
                    "404": _html("No such destination"),
                    **_errors(401, 429),
                    "503": _page_503(),
                },
            },
        },
        "/status/{destination_id}/data.json": {
            "parameters": [DEST_PARAM],
            "get": {
                **page,
                "operationId": "destinationStatusData",
                "summary": "What the status page shows, as JSON (the page reloads it)",
                "parameters": [hours],
                "responses": {
                    "200": json_content({"type": "object"}, "The destination's figures"),
                    "400": _html("A bad hours value"),
                    **_errors(401, 404, 429, 503),
                },
            },
        },
        "/status/assets/{name}": {
            "parameters": [_path_param("name", "A file of the page (script, style sheet)")],
            "get": {
                **open_,
                "operationId": "statusPageAsset",
                "summary": "A static file of the status page",
                "responses": {
                    "200": {"description": "The file", "content": {"*/*": {"schema": {}}}},
                    "404": {"description": "No such file"},
                },
            },
        },
        "/openapi.json": {
            "get": {
                **open_,
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": json_content({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }


def _guard_errors(paths: Doc) -> Doc:
    """``paths`` with the answers of the guards every route of a kind passes: 403 for an admin
    write a browser marks cross-site, 421 for a foreign Host while the admin surface is open,
    408 for a body that stalls."""
    writes = ("post", "put", "patch", "delete")
    for item in paths.values():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses: Doc = op["responses"]
            extra: list[int] = [408] if "requestBody" in op else []
            if op.get("security") == ADMIN:
                extra += [421, 403] if method in writes else [421]
            for code in extra:
                responses.setdefault(str(code), _errors(code)[str(code)])
            op["responses"] = dict(sorted(responses.items()))
    return paths


@cache
def document(max_hours: int = METRICS_RETENTION_HOURS) -> Doc:
    """The whole OpenAPI 3.1 document (``hours`` bounded by ``max_hours``)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "outreach-sync",
            "version": "1",
            "description": "Streams CDP audience membership into Outreach prospects. Producers "
            "send profiles with an API key (osk_...); operators manage destinations with the "
            'admin key. Errors are JSON:API-style: {"errors": [{status, title, detail, '
            "source.pointer}]}.",
        },
        "paths": _guard_errors(
            {
                **_producer_paths(max_hours),
                **_admin_destination_paths(),
                **_connection_paths(),
                **_operator_paths(max_hours),
            }
        ),
        "components": {
            **components(),
            "securitySchemes": {
                "producerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A producer API key (outreach-sync keys create)",
                },
                "producerApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "ADMIN_API_KEY"},
                "adminBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "ADMIN_API_KEY as the password (any user name)",
                },
            },
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document(request.app[MAX_HOURS]))
