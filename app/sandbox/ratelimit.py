"""Rate-limit headers and the 429 answer, as Outreach sends them."""

from __future__ import annotations

import math

from app.sandbox.config import SandboxConfig
from app.sandbox.errors import ApiError, try_again_at
from app.sandbox.quota import QuotaStatus


def ratelimit_headers(
    config: SandboxConfig, status: QuotaStatus, now: float, limited: bool
) -> dict[str, str]:
    """The headers enabled in `config`; Retry-After only on a 429."""
    headers: dict[str, str] = {}
    if config.send_ratelimit_headers:
        headers["X-RateLimit-Limit"] = str(status.limit)
        headers["X-RateLimit-Remaining"] = str(status.remaining)
        headers["X-RateLimit-Reset"] = str(status.reset_epoch_s)
    if limited and config.send_retry_after:
        headers["Retry-After"] = str(max(1, math.ceil(status.reset_epoch_s - now)))
    return headers


def rate_limit_exceeded(status: QuotaStatus) -> ApiError:
    """The 429 error, whose detail carries the limit and the reset time."""
    detail = (
        f"You have exceeded your permitted rate limit of {status.limit:,}; "
        f"please try again at {try_again_at(status.reset_epoch_s)}."
    )
    return ApiError(429, "rateLimitExceeded", "Rate Limit Exceeded", detail)
