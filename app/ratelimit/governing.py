"""Which limit governs a user's spending when the configured one and Outreach's disagree.

A connection's ``rate_limit`` is configured; Outreach may report its own (``X-RateLimit-Limit``).
The lower of the two caps what the service spends: when Outreach reports a lower limit its
figure governs (our window would only add a second, out-of-phase limit); when it reports a
higher one, the configured limit still caps spending, on purpose (an operator may want the
service to use only part of the user's quota). The careful reserve and the headroom
(``reserve_share``) are sized from Outreach's limit when it reports one, since that is the
budget its 429s come from; else from the configured one. ``lua/quota_reserve.lua`` applies
the same rule inside its atomic step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: Below this share of the limit left at the server (and at least CAREFUL_MIN), requests go
#: one at a time: another integration's spending then costs at most one 429 per window.
CAREFUL_SHARE = 0.1
CAREFUL_MIN = 3


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """A user's limits per window: ``configured`` (the connection's ``rate_limit``),
    ``reported`` (Outreach's ``X-RateLimit-Limit``, None until it reports one), and
    ``governing``, the one that caps spending, from ``source``. ``careful``: below this many
    left at Outreach, requests go one at a time."""

    configured: int
    reported: int | None
    governing: int
    source: Literal["configured", "reported"]
    careful: int


def careful_reserve(basis: int) -> int:
    """The careful reserve of a limit of ``basis`` requests."""
    return max(CAREFUL_MIN, math.ceil(basis * CAREFUL_SHARE))


def quota_limits(configured: int, reported: int | None) -> QuotaLimits:
    """The limits of a user whose connection allows ``configured`` and Outreach ``reported``."""
    if reported is None:
        return QuotaLimits(configured, None, configured, "configured", careful_reserve(configured))
    source: Literal["configured", "reported"] = (
        "reported" if reported <= configured else "configured"
    )
    governing = reported if source == "reported" else configured
    return QuotaLimits(configured, reported, governing, source, careful_reserve(reported))
