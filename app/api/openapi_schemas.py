"""The reusable parts of the OpenAPI document (app/api/openapi.py): schemas and error answers."""

from __future__ import annotations

from typing import Any

from app.config.destinations import STATUSES
from app.ingest.profiles import MAX_UNMAPPED_AUDIENCES
from app.outreach import fields as outreach_fields

JSON = "application/json"
#: Destination and connection ids (app/config/destinations.py).
SLUG = "^[a-z0-9][a-z0-9_-]{0,63}$"
Doc = dict[str, Any]
#: The description of each error answer the document refers to (``ErrorNNN``).
ERROR_TITLES = {
    400: "The request is malformed (body, parameter)",
    401: "No valid key (see WWW-Authenticate)",
    403: "Refused: the key is not for this destination, or a browser marked the request as "
    "sent from another site (Sec-Fetch-Site, Origin)",
    404: "No such resource",
    408: "The body did not arrive within API_BODY_TIMEOUT_S",
    409: "Conflicts with the stored state",
    413: "The body is larger than MAX_BODY_BYTES",
    415: "The body is not declared JSON (Content-Type: application/json)",
    421: "Development without ADMIN_API_KEY: the Host is neither a loopback name nor in "
    "API_ALLOWED_HOSTS",
    422: "The body is well-formed but invalid; each error names its member",
    429: "Too many requests for this key; see Retry-After",
    503: "Not available now (Redis unreachable, OAuth not configured, or the destination's "
    "stored record unreadable); see Retry-After",
}


def ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Doc, description: str, **extra: Any) -> Doc:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def schemas() -> Doc:
    custom_max = outreach_fields.CUSTOM_MAX_LENGTH
    error = {
        "type": "object",
        "required": ["status", "title", "detail"],
        "properties": {
            "status": {"type": "string", "description": "The HTTP status, as a string"},
            "title": {"type": "string"},
            "detail": {"type": "string", "description": "What is wrong and how to fix it"},
            "source": {
                "type": "object",
                "required": ["pointer"],
                "properties": {
                    "pointer": {
                        "type": "string",
                        "description": "RFC 6901 JSON Pointer into the request body, "
                        "e.g. /audiences/<audience id>",
                    }
                },
            },
        },
    }
    destination = {
        "type": "object",
        "required": ["id", "name", "connection"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": SLUG},
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "description": {"type": "string", "default": ""},
            "connection": {
                "type": "string",
                "pattern": SLUG,
                "description": "An existing connection's id",
            },
            "enabled": {
                "type": "boolean",
                "default": True,
                "description": "false: nothing is sent; accepted changes keep coalescing",
            },
            "identity_namespace": {
                "type": "string",
                "minLength": 1,
                "default": "OutreachId",
                "description": "identityMap namespace whose ids are Outreach prospect ids "
                "(the OutreachId identity mapping, required)",
            },
            "identity": {
                "type": ["object", "null"],
                "description": "Which identities reach a prospect: the first namespace of "
                "match a profile carries wins; Email is looked up (docs/aep.md)",
                "properties": {
                    "match": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "minLength": 1},
                        "default": ["OutreachId"],
                    },
                    "on_missing": {"type": "string", "enum": ["skip", "create"]},
                    "on_ambiguous": {"type": "string", "enum": ["skip", "all", "newest"]},
                },
                "additionalProperties": False,
            },
            "audiences": {
                "type": "object",
                "description": "Audience id -> mapping ID N (prospect field customN); unique",
                "additionalProperties": {
                    "type": "integer",
                    "minimum": outreach_fields.CUSTOM_MIN,
                    "maximum": outreach_fields.CUSTOM_MAX,
                },
            },
            "mapping_ids": {
                "type": "string",
                "enum": ["config", "data"],
                "default": "config",
                "description": "config: mapping IDs from audiences; data: from each "
                "membership's mappingId (AEP's Mapping ID), learned per audience "
                "(docs/aep.md); audiences must then be empty",
            },
            "attributes": {
                "type": "object",
                "description": "Source attribute -> writable Outreach prospect attribute",
                "additionalProperties": {"type": "string", "enum": sorted(outreach_fields.FIELDS)},
            },
            "status_values": {
                "type": "object",
                "description": "Value written per status (default: the status itself); "
                "null writes nothing for it",
                "properties": {
                    s: {"type": ["string", "null"], "maxLength": custom_max} for s in STATUSES
                },
                "additionalProperties": False,
            },
            "coalesce_window_ms": {"type": ["integer", "null"], "minimum": 0},
            "quota_share": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
            "bulk": {
                "type": "object",
                "description": "Outreach's Bulk API for backfills (docs/operations.md)",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "min_group": {"type": "integer", "minimum": 2},
                    "ids_per_call": {"type": "integer", "minimum": 1, "maximum": 10_000},
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86_400},
                    "poll_first_s": {"type": "number", "exclusiveMinimum": 0},
                    "poll_max_s": {"type": "number", "exclusiveMinimum": 0},
                    "off_s": {"type": "number", "exclusiveMinimum": 0},
                },
                "additionalProperties": False,
            },
            "sequencing": _sequencing(),
        },
    }
    membership = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": list(STATUSES)},
            "lastQualificationTime": {
                "type": ["string", "integer", "null"],
                "description": "ISO 8601 (no zone: UTC) or epoch milliseconds (an integer "
                "below 1e11 reads as epoch seconds and is rejected)",
            },
            "mappingId": {
                "type": ["string", "integer"],
                "description": "The audience's mapping ID N (1-150) for destinations with "
                'mapping_ids "data" (AEP sends the Mapping ID typed per audience)',
            },
        },
    }
    profile = {
        "type": "object",
        "description": "The platform's profile format",
        "properties": {
            "identityMap": {
                "type": "object",
                "additionalProperties": {
                    "type": "array",
                    "items": {"type": "object", "required": ["id"], "properties": {"id": {}}},
                },
            },
            "segmentMembership": {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": membership},
            },
            "attributes": {
                "type": "object",
                "description": 'Per attribute {"value": x} (AEP\'s freeform attributes), {} '
                "(no value), or the plain value (AEP's predefined attributes); one that cannot "
                "be written is left out of its profile with the reason",
                "additionalProperties": {},
            },
            "timestamp": {
                "type": ["string", "integer", "null"],
                "description": "When the event was made, as lastQualificationTime: ISO 8601 "
                "or epoch milliseconds, 1970 to 9999 (else the profile is rejected)",
            },
            "unmappedAudiences": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_UNMAPPED_AUDIENCES,
                "description": "Memberships the producer left out for want of a mapping ID "
                "(AEP's template counts them): counted as ignored audiences",
            },
        },
    }
    counts = (
        "received",
        "accepted",
        "excluded",
        "rejected",
        "ignored_audiences",
        "fields_applied",
        "fields_stale",
        "attributes_rejected",
    )
    report = {
        "type": "object",
        "required": [*counts, "unmapped_attributes"],
        "properties": {
            **{c: {"type": "integer"} for c in counts},
            "unmapped_attributes": {
                "type": "object",
                "description": "Per attribute that no mapping of the destination reads: "
                "profiles whose value for it was left out",
                "additionalProperties": {"type": "integer"},
            },
            "profiles": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "outcome", "reason", "prospects"],
                    "properties": {
                        "index": {"type": "integer"},
                        "outcome": {"type": "string", "enum": ["accepted", "excluded", "rejected"]},
                        "reason": {"type": ["string", "null"]},
                        "prospects": {"type": "array", "items": {"type": "integer"}},
                        "audiences_rejected": {
                            "type": "array",
                            "description": "Audiences of this profile left out, with the "
                            "reason (a mapping ID that is invalid or held by another audience)",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "audience": {"type": "string"},
                                    "reason": {"type": "string"},
                                },
                            },
                        },
                        "attributes_rejected": {
                            "type": "array",
                            "description": "Attributes of this profile left out, with the "
                            "reason (a shape or a value that cannot be written)",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "attribute": {"type": "string"},
                                    "reason": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
    status = {
        "type": "object",
        "required": ["destination", "enabled", "pending", "in_flight", "counters"],
        "properties": {
            "destination": {"type": "string"},
            "enabled": {"type": "boolean"},
            "pending": {"type": "integer"},
            "in_flight": {"type": "integer"},
            "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
            "invalid_mapping_ids": {"type": "array", "items": {"type": "integer"}},
            "quota": {"type": "object"},
            "resolve": {
                "type": "object",
                "description": "Identity resolution (profiles known by email): emails "
                "waiting and the oldest's age, resolved from cache or by lookup, lookups "
                "spent, not found, ambiguous, created",
            },
            "broken": {
                "type": "string",
                "description": "Present when the destination's stored record cannot be read: "
                "why. Its changes wait until it is replaced (PUT) or deleted",
            },
        },
    }
    broken = {
        "type": "object",
        "required": ["kind", "id", "reason"],
        "properties": {
            "kind": {"type": "string", "enum": ["destination", "connection", "producer_key"]},
            "id": {"type": "string"},
            "reason": {"type": "string"},
        },
    }
    return {
        "Error": error,
        "Errors": {
            "type": "object",
            "required": ["errors"],
            "properties": {"errors": {"type": "array", "minItems": 1, "items": ref("Error")}},
        },
        "Destination": destination,
        "DestinationReplacement": {
            **destination,
            "description": "A destination; its id comes from the path (the body's, if any, "
            "must match)",
            "required": ["name", "connection"],
        },
        "Profile": profile,
        "IngestReport": report,
        "DestinationStatus": status,
        "BrokenRecord": broken,
    }


def responses() -> Doc:
    out: Doc = {}
    for code, title in ERROR_TITLES.items():
        resp: Doc = json_content(ref("Errors"), title)
        if code == 401:
            resp["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if code in (429, 503):
            resp["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        out[f"Error{code}"] = resp
    return out


def components() -> Doc:
    """``schemas`` and ``responses`` of the document's ``components``."""
    return {"schemas": schemas(), "responses": responses()}


def _sequencing() -> dict[str, Any]:
    """Sequence enrollment of a destination (app/config/sequencing.py; docs/admin.md)."""
    rule = {
        "type": "object",
        "required": ["sequence"],
        "additionalProperties": False,
        "properties": {
            "sequence": {"type": "integer", "minimum": 1},
            "mailbox": {
                "oneOf": [
                    {"type": "integer", "minimum": 1},
                    {"type": "string", "enum": ["owner", "connection-user"]},
                ],
                "default": "connection-user",
            },
            "on_exit": {"type": "string", "enum": ["none", "finish", "pause"], "default": "none"},
            "reenroll": {"type": "boolean", "default": False},
        },
    }
    return {
        "type": "object",
        "description": "Audience -> Outreach sequence its entering prospects are enrolled in "
        "(off unless sequences names one; docs/admin.md)",
        "additionalProperties": False,
        "properties": {
            "sequences": {"type": "object", "additionalProperties": rule},
            "dry_run": {"type": "boolean", "default": False},
            "quota_share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "per_drain": {"type": "integer", "minimum": 1, "maximum": 1000},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
            "pause_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86_400},
            "already_texts": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "retry_base_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "retry_cap_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86_400},
        },
    }
