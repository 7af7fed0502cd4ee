"""Seeded random fault injection: dropped connections, latency, 5xx answers, armed rules."""

from __future__ import annotations

import random

from aiohttp import web

from app.sandbox.config import SandboxConfig
from app.sandbox.errors import ApiError, try_again_at
from app.sandbox.fault_rules import FaultKind, FaultRule, FaultRules

MAINTENANCE_DELAY_S = 3


class Faults:
    """Draws faults; the generator is only consulted for enabled faults, so runs replay."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self.rules = FaultRules()

    def reseed(self, seed: int | None) -> None:
        """Restart the random sequence."""
        self._rng = random.Random(seed)

    def drop(self, config: SandboxConfig) -> bool:
        """Whether to close the connection without answering."""
        return config.fault_drop_rate > 0 and self._rng.random() < config.fault_drop_rate

    def latency_s(self, config: SandboxConfig) -> float:
        """Extra latency to add before answering."""
        low, high = config.fault_latency_ms
        if high <= 0:
            return 0.0
        return self._rng.uniform(low, high) / 1000

    def server_error(self, config: SandboxConfig, now: float) -> web.Response | None:
        """A random 500/502/503 answer, or None."""
        if config.fault_5xx_rate <= 0 or self._rng.random() >= config.fault_5xx_rate:
            return None
        return server_error_response(self._rng.choice((500, 502, 503)), now)

    def ruled(self, route: str, kinds: tuple[FaultKind, ...]) -> FaultRule | None:
        """The armed rule, among `kinds`, striking a request of `route` now."""
        return self.rules.strike(route, kinds, self._rng)


def server_error_response(status: int, now: float) -> web.Response:
    """A 500 (JSON:API), 502 (an HTML page, as a proxy sends) or 503 (maintenance)."""
    if status == 502:
        html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
        return web.Response(status=502, text=html, content_type="text/html")
    if status == 503:
        return maintenance(now).response()
    detail = "An unexpected error occurred."
    return ApiError(500, "internalServerError", "Internal Server Error", detail).response()


def maintenance(now: float) -> ApiError:
    """The 503 Outreach sends during scheduled maintenance."""
    again = try_again_at(int(now) + MAINTENANCE_DELAY_S)
    detail = f"The server is undergoing scheduled maintenance; please try again at {again}."
    return ApiError(503, "scheduledServerMaintenance", "Scheduled Server Maintenance", detail)
