"""Render AEP's Pebble templates (``PEBBLE_V1``) in Python, for tests and previews offline.

Jinja2 reads almost the same language; where Pebble differs in a way a template for AEP may
rely on, the template's syntax tree is rewritten before compiling:

- looping over a map gives entries with ``.key`` and ``.value`` (Jinja2: the keys);
- ``loop.index`` and ``loop.revindex`` count from 0;
- a variable ``set`` outside a loop and set again inside it keeps the new value across
  iterations and after the loop (Pebble's scope chain; Jinja2 drops it each iteration) —
  every ``set`` variable lives in one template-wide namespace here;
- ``elseif``; the ``empty`` test (null, blank string, empty map or list); the ``raw`` filter
  (a map or list prints as JSON, as Pebble prints Jackson nodes); ``escape(strategy=...)``;
- AEP's ``addedSegments``/``removedSegments``/``hasSegments`` and ``added``/``removed``;
- a missing attribute is null and chains (``a.b.c`` of a missing ``a``), as in Pebble
  without strict variables.

AEP's own render API stays the final check (docs/aep.md).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, Environment, Undefined, nodes
from jinja2.visitor import NodeTransformer

#: The namespace holding every ``set`` variable (a name no template uses).
_VARS = "__pebble_vars"
_ELSEIF = re.compile(r"(\{%-?\s*)elseif\b")
#: Statuses AEP's helpers count as in the audience (``existing``: older revisions).
ADDED = ("realized", "existing")
REMOVED = ("exited",)


@dataclass(frozen=True, slots=True)
class Entry:
    """One map entry, as Pebble's ``for`` yields it."""

    key: Any
    value: Any


def _entries(value: Any) -> Iterable[Any]:
    if isinstance(value, Undefined) or value is None:
        return ()
    if isinstance(value, Mapping):
        return [Entry(k, v) for k, v in value.items()]
    return value  # type: ignore[no-any-return]


def _empty(value: Any) -> bool:
    if value is None or isinstance(value, Undefined):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, Mapping | list | tuple):
        return len(value) == 0
    return False


def _raw(value: Any) -> str:
    if isinstance(value, Undefined) or value is None:
        return ""
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _escape(value: Any, strategy: str = "html") -> str:
    text = "" if value is None or isinstance(value, Undefined) else str(value)
    if strategy == "json":
        return json.dumps(text, ensure_ascii=False)[1:-1]
    if strategy == "html":
        return html.escape(text)
    raise ValueError(f"escape strategy {strategy!r} is not supported here")


def _segments(membership: Any, statuses: tuple[str, ...]) -> dict[str, Any]:
    """Audiences of a ``segmentMembership`` map (any namespace) with one of ``statuses``."""
    found: dict[str, Any] = {}
    if not isinstance(membership, Mapping):
        return found
    for value in membership.values():
        # Either {namespace: {id: m}} or already one namespace's {id: m}.
        inner = value if isinstance(value, Mapping) and "status" not in value else None
        for seg_id, m in (inner or {}).items():
            if isinstance(m, Mapping) and m.get("status") in statuses:
                found[seg_id] = m
    for seg_id, m in membership.items():
        if isinstance(m, Mapping) and m.get("status") in statuses:
            found[seg_id] = m
    return found


def added_segments(membership: Any) -> dict[str, Any]:
    """AEP's ``addedSegments``: audiences the profile is in (realized or existing)."""
    return _segments(membership, ADDED)


def removed_segments(membership: Any) -> dict[str, Any]:
    """AEP's ``removedSegments``: audiences the profile left (exited)."""
    return _segments(membership, REMOVED)


def has_segments(membership: Any) -> bool:
    """AEP's ``hasSegments``: any audience at all, whatever its status."""
    return bool(_segments(membership, (*ADDED, *REMOVED)))


class _PebbleScopes(NodeTransformer):
    """Rewrites a parsed template to Pebble's meaning (see the module docstring)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "pebble_entries", [], [], None, None)
        return node

    def visit_Assign(self, node: nodes.Assign) -> nodes.Node:
        node.node = self.visit(node.node)
        if isinstance(node.target, nodes.Name):
            node.target = nodes.NSRef(_VARS, node.target.name)
        return node

    def visit_Name(self, node: nodes.Name) -> nodes.Node:
        if node.ctx == "load" and node.name in self.names:
            return nodes.Getattr(nodes.Name(_VARS, "load"), node.name, "load")
        return node

    def visit_Getattr(self, node: nodes.Getattr) -> nodes.Node:
        self.generic_visit(node)
        is_loop = isinstance(node.node, nodes.Name) and node.node.name == "loop"
        if is_loop and node.attr in ("index", "revindex"):
            node.attr += "0"
        return node


def environment() -> Environment:
    """A Jinja2 environment with Pebble's and AEP's tests, filters and functions."""
    env = Environment(undefined=ChainableUndefined, autoescape=False, keep_trailing_newline=True)
    env.tests["empty"] = _empty
    env.filters.update(
        pebble_entries=_entries,
        raw=_raw,
        escape=_escape,
        added=added_segments,
        removed=removed_segments,
    )
    env.globals.update(
        addedSegments=added_segments,
        removedSegments=removed_segments,
        hasSegments=has_segments,
    )
    return env


class PebbleTemplate:
    """A Pebble template compiled for Python; ``render(input=..., destination=...)``."""

    def __init__(self, source: str, env: Environment | None = None) -> None:
        self.env = env or environment()
        tree = self.env.parse(_ELSEIF.sub(r"\1elif", source))
        assigns = tree.find_all(nodes.Assign)
        names = {a.target.name for a in assigns if isinstance(a.target, nodes.Name)}
        tree = _PebbleScopes(names).visit(tree)
        ns = nodes.Call(nodes.Name("namespace", "load"), [], [], None, None)
        tree.body.insert(0, nodes.Assign(nodes.Name(_VARS, "store"), ns))
        tree.set_environment(self.env)
        self.template = self.env.from_string(tree)

    def render(self, **context: Any) -> str:
        return self.template.render(**context)


def render_request(
    source: str, profiles: list[Mapping[str, Any]], aliases: Mapping[str, Any]
) -> str:
    """The body AEP would POST for ``profiles`` (best effort, several per call), as AEP's render
    API shows it; ``aliases``: ``namespaceSegmentAliases`` (namespace -> audience -> alias)."""
    destination = {"namespaceSegmentAliases": aliases, "segmentAliases": aliases.get("ups", {})}
    return PebbleTemplate(source).render(input={"profiles": profiles}, destination=destination)
