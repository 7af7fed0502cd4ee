"""Packages' public names, loaded on first use (PEP 562).

Each package's ``__init__`` declares what other parts may use, and from which module; the
module is imported when a name is first asked for, so that importing one part of a package
(a producer importing ingestion, say) does not load the rest of it (the OAuth client, aiohttp).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load(package: str, exports: Mapping[str, str], name: str) -> Any:
    """``package``'s public ``name``, from the module ``exports`` maps it to."""
    try:
        module = exports[name]
    except KeyError:
        raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
