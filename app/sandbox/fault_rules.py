"""Faults armed for one route (or all), by rate and count, through the control API.

A route is named by its method and path template as the server declares it, e.g.
``POST /api/v2/prospects`` or ``POST /api/v2/sequenceStates/{id}/actions/{action}``; ``*``
names every API route. The ``*_after_write`` kinds strike after a successful action, so the
write happened and the client cannot know it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["drop", "5xx", "drop_after_write", "5xx_after_write"]
AFTER_WRITE: tuple[FaultKind, ...] = ("drop_after_write", "5xx_after_write")
ANY_ROUTE = "*"


class FaultRule(BaseModel):
    """One armed fault: `count` strikes (None: no end), each drawn with probability `rate`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: str = Field(min_length=1)
    kind: FaultKind
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=1)
    status: Literal[500, 502, 503] = 500


@dataclass(slots=True)
class _Armed:
    rule: FaultRule
    fired: int = 0

    @property
    def spent(self) -> bool:
        return self.rule.count is not None and self.fired >= self.rule.count


class FaultRules:
    """The armed rules, in the order they were armed; the first that strikes wins."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def arm(self, rule: FaultRule) -> None:
        """Add a rule."""
        self._armed.append(_Armed(rule))

    def clear(self) -> None:
        """Disarm every rule."""
        self._armed.clear()

    def strike(
        self, route: str, kinds: tuple[FaultKind, ...], rng: random.Random
    ) -> FaultRule | None:
        """The rule that strikes this request at this point, if any (and count it)."""
        for armed in self._armed:
            rule = armed.rule
            if armed.spent or rule.kind not in kinds or rule.route not in (route, ANY_ROUTE):
                continue
            if rule.rate >= 1.0 or rng.random() < rule.rate:
                armed.fired += 1
                return rule
        return None

    def to_json(self) -> list[dict[str, Any]]:
        """Every rule with how often it struck."""
        return [{**a.rule.model_dump(), "fired": a.fired} for a in self._armed]
