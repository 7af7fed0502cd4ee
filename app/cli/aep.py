"""``outreach-sync aep``: the Destination SDK package, template previews, learned mapping IDs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from app.aep import package


def cmd_package(ns: argparse.Namespace) -> int:
    out = Path(ns.out)
    if ns.check:
        return _check(out, ns)
    for path in package.write_package(out, ns.url or package.EXAMPLE_URL, ns.docs_url):
        print(f"wrote {path}")
    return 0


def _check(out: Path, ns: argparse.Namespace) -> int:
    """Compare ``out`` with what the current template generates for the same URLs: those
    given, else those the files in ``out`` carry."""
    found = package.read_urls(out)
    url = ns.url or (found.url if found else None) or package.EXAMPLE_URL
    docs_url = ns.docs_url or (found.docs_url if found and not ns.url else None)
    stale = package.stale_files(out, url, docs_url)
    if not stale:
        return 0
    again = f"outreach-sync aep package --out {shlex.quote(str(out))} --url {shlex.quote(url)}"
    if docs_url and docs_url != package.default_docs_url(url):
        again += f" --docs-url {shlex.quote(docs_url)}"
    for name in stale:
        print(f"{out / name} differs from what the template generates for {url}")
    print(f"to regenerate: {again}")
    return 1


def _alias(spec: str, flag: str) -> tuple[str, str]:
    """``AUDIENCE=ALIAS``: the audience id is everything before the last ``=``, colons and all."""
    audience, sep, alias = spec.rpartition("=")
    if not sep or not audience:
        raise SystemExit(f"error: {flag} {spec!r}: write AUDIENCE=MAPPING_ID")
    return audience, alias


def destination_context(ns: argparse.Namespace) -> dict[str, Any]:
    """The template's ``destination`` variable: the file given, then the aliases given, each
    in the one form its option names (AEP fills either; nothing is copied between them)."""
    context: dict[str, Any] = {}
    if ns.destination:
        context = json.loads(Path(ns.destination).read_text(encoding="utf-8"))
        if not isinstance(context, dict):
            raise SystemExit(f"error: --destination {ns.destination}: not a JSON object")
    for spec in ns.alias:
        audience, alias = _alias(spec, "--alias")
        context.setdefault("namespaceSegmentAliases", {}).setdefault(ns.namespace, {})[audience] = (
            alias
        )
    for spec in ns.segment_alias:
        audience, alias = _alias(spec, "--segment-alias")
        context.setdefault("segmentAliases", {})[audience] = alias
    return context


def cmd_render(ns: argparse.Namespace) -> int:
    from app.aep.pebble import render_request

    text = sys.stdin.read() if ns.file == "-" else Path(ns.file).read_text(encoding="utf-8")
    doc: Any = json.loads(text)
    profiles = doc["profiles"] if isinstance(doc, dict) and "profiles" in doc else doc
    profiles = profiles if isinstance(profiles, list) else [profiles]
    source = Path(ns.template).read_text(encoding="utf-8") if ns.template else None
    body = render_request(
        source or package.packaged_template(),
        profiles,
        destination_context(ns),
        objects=ns.objects,
    )
    print(body)
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
    pkg.add_argument(
        "--url", help=f"this service's public base URL (default: {package.EXAMPLE_URL})"
    )
    pkg.add_argument("--docs-url", help="documentation link shown in AEP (default: URL/docs/aep)")
    pkg.add_argument(
        "--out",
        default=package.DEFAULT_OUT,
        help=f"directory (default: ./{package.DEFAULT_OUT} in the current directory)",
    )
    pkg.add_argument(
        "--check",
        action="store_true",
        help="only report files that differ from what the template generates for their URLs "
        "(or for --url/--docs-url when given)",
    )
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
        metavar="AUDIENCE=N",
        help="the Mapping ID typed for an audience, as destination.namespaceSegmentAliases "
        "holds it (in --namespace); repeatable",
    )
    render.add_argument(
        "--namespace", default="ups", help="the audiences' namespace for --alias (default: ups)"
    )
    render.add_argument(
        "--segment-alias",
        action="append",
        default=[],
        metavar="AUDIENCE=N",
        help="the same, as the older destination.segmentAliases holds it; repeatable",
    )
    render.add_argument(
        "--destination",
        metavar="FILE",
        help="the template's whole destination variable as JSON (aliases added to it)",
    )
    render.add_argument(
        "--objects",
        choices=("java", "json"),
        default="java",
        help="how a printed object looks: java (a Java map's toString, the default) or json "
        "(a Jackson node)",
    )
    render.add_argument("--template", help="a template file (default: the packaged one)")
    render.set_defaults(func=cmd_render)
    maps = aep_sub.add_parser("mappings", help="mapping IDs learned from the data, per audience")
    maps.add_argument("destination")
    maps.add_argument("--forget", metavar="AUDIENCE", help="drop its mapping ID, freeing it")
    maps.set_defaults(func=cmd_mappings)
