"""The service's one settings object, read from the environment and an optional ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, RedisDsn, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import keys


class SettingsError(Exception):
    """Settings that cannot be used; the message names every bad variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(RedisDsn("redis://127.0.0.1:6379/0"))
    redis_key_prefix: str = Field("os", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    broker_url: str | None = None  # Celery broker; defaults to REDIS_URL
    celery_queue: str = Field("outreach-sync", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    outreach_api_url: str = "https://api.outreach.io/api/v2"
    outreach_authorize_url: str = "https://api.outreach.io/oauth/authorize"
    outreach_token_url: str = "https://api.outreach.io/oauth/token"
    outreach_timeout_s: float = Field(30.0, gt=0, le=300)

    config_file: Path | None = None  # destinations/connections file loaded at start

    coalesce_window_ms: int = Field(keys.COALESCE_WINDOW_MS, ge=0, le=3_600_000)
    lease_ms: int = Field(keys.LEASE_MS, ge=1000)
    claim_batch: int = Field(keys.CLAIM_BATCH, ge=1, le=1000)
    max_drainers: int = Field(keys.MAX_DRAINERS, ge=1, le=256)
    http_concurrency: int = Field(16, ge=1, le=512)
    drain_budget_s: float = Field(keys.DRAIN_BUDGET_S, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_retry_age_s: float = Field(24 * 3600, gt=0)
    rate_limit_fallback_pause_s: float = Field(60.0, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    sentry_dsn: str | None = None

    # --- issue 5: connections, OAuth, token encryption (auth helper adds fields here) ---

    # --- issue 5: producers' API keys and the admin API (admin helper adds fields here) ---
    #: The operators' secret for the admin API, OAuth start and status page (app/adminauth.py).
    admin_api_key: SecretStr | None = None

    # --- issue 6: dataflow metrics, Prometheus, status page (metrics helper adds fields here) ---

    # --- issue 6: Sentry, JSON logs, alerts (ops helper adds fields here) ---

    @field_validator("outreach_api_url", "outreach_authorize_url", "outreach_token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or str(self.redis_url)

    @property
    def keys(self) -> keys.Keys:
        return keys.Keys(self.redis_key_prefix)


def load_settings() -> Settings:
    """Read and validate the settings, turning pydantic's errors into one readable message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        ]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
