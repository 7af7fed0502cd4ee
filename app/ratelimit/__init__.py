"""The quota gate: one Outreach request budget per user, shared by every worker through Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.ratelimit.gate import (
        PROBE_TIMEOUT_S,
        Grant,
        QuotaGate,
        QuotaUnavailable,
        Share,
        gate_for,
    )
    from app.ratelimit.governing import QuotaLimits, careful_reserve, quota_limits
    from app.ratelimit.scripts import ObserveArgs, RefundArgs, encode

_EXPORTS = {
    "Grant": "app.ratelimit.gate",
    "ObserveArgs": "app.ratelimit.scripts",
    "PROBE_TIMEOUT_S": "app.ratelimit.gate",
    "QuotaGate": "app.ratelimit.gate",
    "QuotaLimits": "app.ratelimit.governing",
    "QuotaUnavailable": "app.ratelimit.gate",
    "RefundArgs": "app.ratelimit.scripts",
    "Share": "app.ratelimit.gate",
    "careful_reserve": "app.ratelimit.governing",
    "encode": "app.ratelimit.scripts",
    "gate_for": "app.ratelimit.gate",
    "quota_limits": "app.ratelimit.governing",
}

__all__ = [
    "PROBE_TIMEOUT_S",
    "Grant",
    "ObserveArgs",
    "QuotaGate",
    "QuotaLimits",
    "QuotaUnavailable",
    "RefundArgs",
    "Share",
    "careful_reserve",
    "encode",
    "gate_for",
    "quota_limits",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
