"""Render AEP's Pebble templates (``PEBBLE_V1``) in Python, for tests and previews offline.

Jinja2 reads almost the same language; where Pebble differs in a way a template for AEP may
rely on, the template's syntax tree is rewritten before compiling, or Pebble's own test or
filter stands in for Jinja2's:

- looping over a map gives entries with ``.key`` and ``.value`` (Jinja2: the keys);
- ``loop.index`` and ``loop.revindex`` count from 0;
- a variable ``set`` outside a loop and set again inside it keeps the new value across
  iterations and after the loop (Pebble's scope chain; Jinja2 drops it each iteration) —
  every ``set`` variable lives in one template-wide namespace here;
- printing: null prints nothing, booleans ``true``/``false``, and an object as the context
  holds it (``objects``): a Java map or list prints Java's ``toString``
  (``{a={value=x}}``, not JSON), a Jackson node prints JSON. AEP's context objects may be
  either, so a template for AEP prints scalars only, and the default here is the Java map;
- ``elseif``; the tests ``empty`` (null, a string Java's ``trim`` leaves empty — it strips
  only characters up to U+0020, not a no-break space —, an empty map or list), ``null``,
  ``defined``, ``map`` and ``iterable``; the ``raw`` filter; ``escape(strategy=...)`` with
  ``json`` as Pebble's escaper (unbescape) writes it;
- AEP's ``addedSegments``/``removedSegments``/``hasSegments`` and ``added``/``removed``;
- a missing attribute is null and chains (``a.b.c`` of a missing ``a``), as in Pebble
  without strict variables.

AEP's own render API stays the final check (docs/aep.md).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

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


#: Characters Java's ``String.trim`` strips: U+0000 to U+0020 (not U+00A0, nor Unicode spaces).
_JAVA_BLANK = "".join(map(chr, range(0x21)))
#: How a printed object looks: ``java`` (a Java Map/List's toString), ``json`` (a Jackson node).
Objects = Literal["java", "json"]


def _empty(value: Any) -> bool:
    if _null(value):
        return True
    if isinstance(value, str):
        return not value.strip(_JAVA_BLANK)
    if isinstance(value, Mapping | list | tuple):
        return len(value) == 0
    return False


def _null(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


def java_string(value: Any) -> str:
    """``String.valueOf(value)`` of the Java object a context value stands for."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{java_string(k)}={java_string(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(java_string, value)) + "]"
    return str(value)


def _java_double(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(value)]
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value) if "e" not in repr(value) else f"{value:.1f}"
    mantissa, exponent = f"{value:e}".split("e")
    digits = repr(float(mantissa)).rstrip("0") or "0"
    return f"{digits}{'0' if digits.endswith('.') else ''}E{int(exponent)}"


def _printer(objects: Objects) -> Callable[[Any], str]:
    """How Pebble prints a value (``{{ x }}``, ``raw``, what ``escape`` escapes)."""

    def printed(value: Any) -> str:
        if _null(value):
            return ""
        if isinstance(value, Mapping | list | tuple) and objects == "json":
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return java_string(value)

    return printed


def _json_escape(text: str) -> str:
    """unbescape's ``JsonEscape.escapeJson`` (Pebble's ``json`` strategy): the basic set by
    its short form, every other control character, ``&`` and all non-ASCII as ``\\uXXXX``,
    ``/`` only after ``<``."""
    out = []
    previous = ""
    for ch in text:
        code = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch == "/":
            out.append("\\/" if previous == "<" else "/")
        elif code < 0x20 or code >= 0x7F or ch == "&":
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02X}{units[i + 1]:02X}" for i in range(0, len(units), 2))
        else:
            out.append(ch)
        previous = ch
    return "".join(out)


_SHORT = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _escaper(printed: Callable[[Any], str]) -> Callable[..., str | None]:
    def escape(value: Any, strategy: str = "html") -> str | None:
        if _null(value):
            return None
        if strategy == "json":
            return _json_escape(printed(value))
        if strategy == "html":
            return html.escape(printed(value))
        raise ValueError(f"escape strategy {strategy!r} is not supported here")

    return escape


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


def environment(objects: Objects = "java") -> Environment:
    """A Jinja2 environment with Pebble's and AEP's tests, filters and functions; ``objects``:
    how a printed map or list looks (see the module docstring)."""
    printed = _printer(objects)
    env = Environment(
        undefined=ChainableUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=printed,
    )
    env.tests.update(
        empty=_empty,
        null=_null,
        defined=lambda value: not _null(value),
        map=lambda value: isinstance(value, Mapping),
        iterable=lambda value: isinstance(value, Mapping | list | tuple),
    )
    env.filters.update(
        pebble_entries=_entries,
        raw=lambda value: None if _null(value) else printed(value),
        escape=_escaper(printed),
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

    def __init__(self, source: str, *, objects: Objects = "java") -> None:
        self.env = environment(objects)
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
    source: str,
    profiles: list[Mapping[str, Any]],
    destination: Mapping[str, Any],
    *,
    objects: Objects = "java",
) -> str:
    """The body AEP would POST for ``profiles`` (best effort, several per call), as AEP's render
    API shows it. ``destination``: the template's ``destination`` variable exactly as given
    (``namespaceSegmentAliases``: namespace -> audience -> alias, and/or the older
    ``segmentAliases``: audience -> alias); nothing is filled in for a form it lacks."""
    context = {"input": {"profiles": profiles}, "destination": destination}
    return PebbleTemplate(source, objects=objects).render(**context)
