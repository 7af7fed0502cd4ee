"""``outreach-sync aep``: the Destination SDK package, template previews, learned mapping IDs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.aep import package


def cmd_package(ns: argparse.Namespace) -> int:
    out = Path(ns.out)
    if ns.check:
        stale = package.stale_files(out, ns.url, ns.docs_url)
        for name in stale:
            print(f"{out / name} differs from the template: run `outreach-sync aep package`")
        return 1 if stale else 0
    for path in package.write_package(out, ns.url, ns.docs_url):
        print(f"wrote {path}")
    return 0


def _aliases(specs: list[str]) -> dict[str, dict[str, str]]:
    aliases: dict[str, dict[str, str]] = {}
    for spec in specs:
        where, sep, alias = spec.rpartition("=")
        namespace, colon, audience = where.rpartition(":") if ":" in where else ("ups", ":", where)
        if not sep or not colon or not audience:
            raise SystemExit(f"error: --alias {spec!r}: write [NAMESPACE:]AUDIENCE=MAPPING_ID")
        aliases.setdefault(namespace or "ups", {})[audience] = alias
    return aliases


def cmd_render(ns: argparse.Namespace) -> int:
    from app.aep.pebble import render_request

    text = sys.stdin.read() if ns.file == "-" else Path(ns.file).read_text(encoding="utf-8")
    doc: Any = json.loads(text)
    profiles = doc["profiles"] if isinstance(doc, dict) and "profiles" in doc else doc
    profiles = profiles if isinstance(profiles, list) else [profiles]
    source = Path(ns.template).read_text(encoding="utf-8") if ns.template else None
    print(render_request(source or package.packaged_template(), profiles, _aliases(ns.alias)))
    return 0


def cmd_mappings(ns: argparse.Namespace) -> int:
    from app.core.redis_client import sync_client
    from app.core.settings import get_settings
    from app.store.audience_map import forget_sync, learned_sync

    s = get_settings()
    client = sync_client(s)
    if ns.forget:
        held = forget_sync(client, s.keys, ns.destination, ns.forget)
        if held is None:
            print(f"error: audience {ns.forget!r} has no learned mapping ID", file=sys.stderr)
            return 2
        print(f"forgot {ns.forget} -> {held}: mapping ID {held} is free")
        return 0
    table = learned_sync(client, s.keys, ns.destination)
    for audience, n in sorted(table.items(), key=lambda item: item[1]):
        print(f"{n:>4}  custom{n:<4} {audience}")
    if not table:
        print("no mapping IDs learned")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``aep`` and its subcommands to the CLI."""
    aep = sub.add_parser(
        "aep", help="Adobe Experience Platform: Destination SDK package (docs/aep.md)"
    )
    aep_sub = aep.add_subparsers(dest="action", required=True)
    pkg = aep_sub.add_parser("package", help="generate the Destination SDK configurations")
    pkg.add_argument("--url", default=package.EXAMPLE_URL, help="this service's public base URL")
    pkg.add_argument("--docs-url", help="documentation link shown in AEP (default: URL/docs/aep)")
    pkg.add_argument("--out", default="deploy/aep", help="directory (default: deploy/aep)")
    pkg.add_argument("--check", action="store_true", help="only report files that differ")
    pkg.set_defaults(func=cmd_package)
    render = aep_sub.add_parser(
        "render", help="render the body template over AEP profiles, as AEP's render API would"
    )
    render.add_argument(
        "file", help="AEP profiles: a JSON list or {\"profiles\": [...]} ('-': stdin)"
    )
    render.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="[NS:]AUDIENCE=N",
        help="the Mapping ID typed for an audience (namespace default: ups); repeatable",
    )
    render.add_argument("--template", help="a template file (default: the packaged one)")
    render.set_defaults(func=cmd_render)
    maps = aep_sub.add_parser("mappings", help="mapping IDs learned from the data, per audience")
    maps.add_argument("destination")
    maps.add_argument("--forget", metavar="AUDIENCE", help="drop its mapping ID, freeing it")
    maps.set_defaults(func=cmd_mappings)
