"""The Destination SDK package: what an AEP administrator POSTs to AEP's authoring API.

``build_package`` turns the readable Pebble template (``profiles.pebble``) and the choices
below into the two configurations, escaping the template into JSON, so nobody edits escaped
JSON by hand. ``outreach-sync aep package`` writes them (for the user's URL, into
``./aep-package/`` unless told otherwise); the example in ``deploy/aep/`` is generated the same
way, and a test holds it to what this module generates.

Choices (docs/aep.md says more):

- **BEARER** customer authentication: the token the user types when connecting is one of
  our producer keys, and AEP sends it as ``Authorization: Bearer <key>``.
- **mapUserInput**: the user types each audience's Mapping ID N, which reaches the template
  as the audience alias and us as ``mappingId``; the destination takes its mapping IDs from
  the data (``mapping_ids: "data"``).
- **BEST_EFFORT aggregation, up to 99 profiles per call**: AEP sends as soon as profiles
  qualify (streaming latency, seconds) and packs up to 99 into one request: Adobe's
  guidance keeps best effort to fewer than 100 profiles per call. Configurable aggregation
  would hold every change at least 301 s, and our service already coalesces changes per
  prospect, so a larger batch would buy nothing but latency. Best effort also retries our
  429 and 503.
- ``splitUserById`` off: one profile's OutreachIds travel together; we update each.
- Two target identities: ``OutreachId`` (a prospect id, the cheapest) and ``Email`` (plain
  addresses, looked up in batches or created: ``identity`` rules of the destination).
- Historical backfill on: the first export carries everyone already in the audiences.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from app.outreach import fields as outreach_fields

#: The URL in the committed package; ``--url`` names the real one.
EXAMPLE_URL = "https://outreach-sync.example.com"
#: Placeholder for the id AEP returns when the destination server is created.
SERVER_ID_PLACEHOLDER = "<instanceId of the destination server>"
#: The customer data field holding our destination id (typed in when connecting).
DESTINATION_FIELD = "destinationId"
#: Profiles per export call: Adobe's guidance keeps best effort to fewer than 100.
MAX_USERS_PER_REQUEST = 99
#: Where ``aep package`` writes a user's package: in the current directory, never over the
#: committed example (``deploy/aep/``).
DEFAULT_OUT = "aep-package"
#: The path the API serves docs/aep.md at, and the package's default documentation link.
DOCS_PATH = "/docs/aep"
SERVER_FILE = "destination-server.json"
_COMMENT = re.compile(r"\{#.*?#\}\n?", re.DOTALL)
DESTINATION_FILE = "destination.json"


def template_source() -> str:
    """The readable Pebble template of the request body, comments and all."""
    return resources.files("app.aep").joinpath("profiles.pebble").read_text(encoding="utf-8")


def guide() -> str:
    """docs/aep.md as shipped with the package (``guide.md``, a copy a test holds equal), so
    an installed service serves it at ``DOCS_PATH``."""
    return resources.files("app.aep").joinpath("guide.md").read_text(encoding="utf-8")


def packaged_template() -> str:
    """The template as AEP gets it: without its comments (which are for people, and whose
    whitespace control AEP's Pebble need not share)."""
    return _COMMENT.sub("", template_source())


def destination_server(url: str = EXAMPLE_URL) -> dict[str, Any]:
    """The destination-server configuration (``POST .../authoring/destination-servers``)."""
    base = url.rstrip("/")
    return {
        "name": "outreach-sync",
        "destinationServerType": "URL_BASED",
        "urlBasedDestination": {
            "url": {
                "templatingStrategy": "PEBBLE_V1",
                "value": f"{base}/v1/destinations/{{{{customerData.{DESTINATION_FIELD}}}}}"
                "/profiles",
            }
        },
        "httpTemplate": {
            "httpMethod": "POST",
            "requestBody": {"templatingStrategy": "PEBBLE_V1", "value": packaged_template()},
            "contentType": "application/json",
        },
    }


def _profile_fields() -> list[dict[str, Any]]:
    """Writable Outreach prospect attributes that take a string (customN: the audiences')."""
    return [
        {"name": name, "title": name, "type": "string", "isRequired": False}
        for name, spec in outreach_fields.FIELDS.items()
        if spec.kind == "string" and not name.startswith("custom")
    ]


def default_docs_url(url: str) -> str:
    """The documentation link for a service at ``url``: the guide it serves itself."""
    return f"{url.rstrip('/')}{DOCS_PATH}"


def destination(docs_url: str = f"{EXAMPLE_URL}{DOCS_PATH}") -> dict[str, Any]:
    """The destination configuration (``POST .../authoring/destinations``)."""
    return {
        "name": "Outreach (outreach-sync)",
        "description": "Audience membership and attributes to Outreach prospects through "
        "outreach-sync: the Mapping ID N of an audience names the prospect field customN.",
        "status": "TEST",
        "customerAuthenticationConfigurations": [{"authType": "BEARER"}],
        "customerDataFields": [
            {
                "name": DESTINATION_FIELD,
                "title": "outreach-sync destination ID",
                "description": "The id of the outreach-sync destination to write to "
                '(its mapping_ids must be "data").',
                "type": "string",
                "isRequired": True,
                "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$",
                "readOnly": False,
                "hidden": False,
            }
        ],
        "uiAttributes": {
            "documentationLink": docs_url,
            "category": "crm",
            "connectionType": "Server-to-server",
            "frequency": "Streaming",
        },
        "identityNamespaces": {
            "OutreachId": {"acceptsAttributes": True, "acceptsCustomNamespaces": True},
            # Plain addresses: a hashed email cannot be looked up in Outreach.
            "Email": {
                "acceptsAttributes": True,
                "acceptsCustomNamespaces": True,
                "acceptedGlobalNamespaces": {"Email": {}},
            },
        },
        "schemaConfig": {
            "profileFields": _profile_fields(),
            # Users map profile attributes (profileFields): Adobe's reference says true then.
            "profileRequired": True,
            "segmentRequired": True,
            "identityRequired": True,
        },
        "segmentMappingConfig": {
            "mapExperiencePlatformSegmentName": False,
            "mapExperiencePlatformSegmentId": False,
            "mapUserInput": True,
        },
        "aggregation": {
            "aggregationType": "BEST_EFFORT",
            "bestEffortAggregation": {
                "maxUsersPerRequest": MAX_USERS_PER_REQUEST,
                "splitUserById": False,
            },
        },
        "destinationDelivery": [
            {
                "authenticationRule": "CUSTOMER_AUTHENTICATION",
                "destinationServerId": SERVER_ID_PLACEHOLDER,
            }
        ],
        "backfillHistoricalProfileData": True,
    }


def build_package(url: str = EXAMPLE_URL, docs_url: str | None = None) -> dict[str, str]:
    """File name -> text of every file of the package."""
    docs = docs_url or default_docs_url(url)
    return {
        SERVER_FILE: _json(destination_server(url)),
        DESTINATION_FILE: _json(destination(docs)),
    }


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write_package(out: Path, url: str = EXAMPLE_URL, docs_url: str | None = None) -> list[Path]:
    """Write the package into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in build_package(url, docs_url).items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def stale_files(out: Path, url: str = EXAMPLE_URL, docs_url: str | None = None) -> list[str]:
    """Files of ``out`` that differ from what would be generated (missing ones included)."""
    stale = []
    for name, text in build_package(url, docs_url).items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


@dataclass(frozen=True, slots=True)
class Urls:
    """The URLs a generated package carries."""

    url: str
    docs_url: str | None


_SERVER_URL = re.compile(r"^(?P<base>.+)/v1/destinations/\{\{customerData\.\w+\}\}/profiles$")


def read_urls(out: Path) -> Urls | None:
    """The base URL (and documentation link) of the package in ``out``; ``None`` when its
    server file is missing or not one this module wrote."""
    try:
        server = json.loads((out / SERVER_FILE).read_text(encoding="utf-8"))
        match = _SERVER_URL.match(server["urlBasedDestination"]["url"]["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if match is None:
        return None
    try:
        dest = json.loads((out / DESTINATION_FILE).read_text(encoding="utf-8"))
        docs = dest["uiAttributes"]["documentationLink"]
    except (OSError, ValueError, KeyError, TypeError):
        docs = None
    return Urls(match["base"], docs if isinstance(docs, str) else None)
