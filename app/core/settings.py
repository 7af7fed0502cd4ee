"""The service's one settings object, read from the environment and an optional ``.env``."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import (
    Field,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core import keys


class SettingsError(Exception):
    """Settings that cannot be used; the message names every bad variable."""


class Settings(BaseSettings):
    # env_ignore_empty: `VAR=""` (a blank line in a Kubernetes secret, say) means unset.
    # allow_inf_nan=False: "inf" or "nan" in a duration is a typo, not a setting.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True, allow_inf_nan=False
    )

    redis_url: RedisDsn = Field(RedisDsn("redis://127.0.0.1:6379/0"))
    redis_key_prefix: str = Field("os", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    #: Longest wait for a Redis command's answer (a blocking command's own wait comes on top)
    #: and for a connection: a hung Redis becomes a quick error (503, a retried drain), never
    #: a hung request (app/core/redis_client.py).
    redis_socket_timeout_s: float = Field(5.0, gt=0, le=300)
    redis_connect_timeout_s: float = Field(3.0, gt=0, le=60)
    broker_url: str | None = None  # Celery broker; defaults to REDIS_URL
    celery_queue: str = Field("outreach-sync", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    outreach_api_url: str = "https://api.outreach.io/api/v2"
    outreach_authorize_url: str = "https://api.outreach.io/oauth/authorize"
    outreach_token_url: str = "https://api.outreach.io/oauth/token"
    outreach_timeout_s: float = Field(30.0, gt=0, le=300)

    coalesce_window_ms: int = Field(keys.COALESCE_WINDOW_MS, ge=0, le=3_600_000)
    lease_ms: int = Field(keys.LEASE_MS, ge=1000)
    claim_batch: int = Field(keys.CLAIM_BATCH, ge=1, le=1000)
    max_drainers: int = Field(keys.MAX_DRAINERS, ge=1, le=256)
    http_concurrency: int = Field(16, ge=1, le=512)
    drain_budget_s: float = Field(keys.DRAIN_BUDGET_S, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: Seconds from a connection's (or a request's) first byte to the end of its headers,
    #: and from there to the end of its body: a stalled client is let go, not waited for.
    api_header_timeout_s: float = Field(10.0, gt=0, le=600)
    api_body_timeout_s: float = Field(60.0, gt=0, le=3600)
    max_retry_age_s: float = Field(24 * 3600, gt=0)
    #: A transient failure is retried after base * 2^attempts seconds (capped), jittered.
    retry_backoff_base_s: float = Field(1.0, gt=0, le=60)
    retry_backoff_cap_s: float = Field(600.0, gt=0)
    rate_limit_fallback_pause_s: float = Field(60.0, gt=0)
    #: Emails per lookup request, and how long a lookup's answer is remembered (app/resolve).
    resolve_batch: int = Field(keys.RESOLVE_BATCH, ge=1, le=500)
    resolve_cache_found_s: int = Field(keys.RESOLVE_CACHE_FOUND_S, ge=1)
    resolve_cache_missing_s: int = Field(keys.RESOLVE_CACHE_MISSING_S, ge=1)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    #: Host names the open (development, no ADMIN_API_KEY) API answers besides loopback ones,
    #: comma-separated: any other Host header may be a DNS-rebinding page.
    api_allowed_hosts: str = Field("", pattern=r"^[A-Za-z0-9.:\[\], _-]*$")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    sentry_dsn: str | None = None

    # Connections, OAuth and token encryption.
    #: development (the default) or production: production refuses to start without
    #: TOKEN_ENCRYPTION_KEY and ADMIN_API_KEY (app/ops/startup.py).
    app_env: str = Field("development", pattern=r"^(development|production)$")
    #: Fernet key(s) encrypting tokens at rest, comma-separated; the first encrypts, all decrypt.
    token_encryption_key: SecretStr | None = None
    #: The Outreach OAuth application (connections/oauth.py); redirect URI defaults to this API's
    #: ``/oauth/callback``, scopes are space-separated.
    outreach_client_id: str | None = None
    outreach_client_secret: SecretStr | None = None
    outreach_redirect_uri: str | None = None
    outreach_scopes: str = Field("prospects.all", min_length=1)
    #: An access token this close to its expiry is refreshed before it is used.
    token_refresh_margin_s: float = Field(300.0, ge=0)
    #: Longest a refresh may take, waiting out the token endpoint's 429s and another process's
    #: refresh of the same connection included.
    token_refresh_wait_s: float = Field(30.0, gt=0, le=600)
    #: How long an OAuth ``state`` (one authorization attempt) stays usable.
    oauth_state_ttl_s: int = Field(600, ge=30, le=3600)
    #: A destination whose connection needs re-authorization is held this long at a time.
    reauth_hold_s: float = Field(5.0, gt=0, le=300)

    # Producers' API keys and the admin API.
    #: The operators' secret for the admin API, OAuth start and status page (app/api/adminauth.py).
    admin_api_key: SecretStr | None = None
    #: Requests one producer key may make (a moving window shared by every API process),
    #: in the `limits` notation: "50/second", "3000 per 1 minute".
    producer_rate_limit: str = "50/second"
    #: Failed authentications one client address may make (shared by every API process);
    #: past it, even a right key is answered 429 until the window moves on.
    auth_failure_limit: str = "20/minute"

    @field_validator("producer_rate_limit", "auth_failure_limit")
    @classmethod
    def _limits_notation(cls, value: str) -> str:
        from limits import parse_many

        try:
            parsed = parse_many(value)
        except ValueError:
            parsed = []
        if len(parsed) != 1 or parsed[0].amount < 1:
            raise ValueError(f"{value!r} is not one rate limit of at least 1, e.g. '50/second'")
        return value

    # Dataflow metrics, Prometheus, the status page.
    #: Hours of hourly dataflow metrics kept in Redis (store/counters.py); totals are kept forever.
    metrics_retention_hours: int = Field(keys.METRICS_RETENTION_HOURS, ge=1, le=24 * 400)
    #: A worker's Prometheus /metrics port, served by its main process (0: off).
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    #: Seconds between the status page's refreshes in the browser (0: no refresh).
    status_page_refresh_s: int = Field(10, ge=0, le=3600)

    # Sentry, logs, Sentinel, alerts.
    sentry_environment: str | None = None  # e.g. production, staging
    sentry_traces_sample_rate: float = Field(0.0, ge=0, le=1)
    #: json: one JSON object per line; text: for people; auto: json unless stderr is a terminal.
    log_format: str = Field("auto", pattern=r"^(auto|json|text)$")
    #: Sentinel instead of one Redis: "host:port,host:port"; REDIS_URL then gives db/password.
    redis_sentinels: str | None = Field(None, pattern=r"^[^\s:,]+:\d{1,5}(,[^\s:,]+:\d{1,5})*$")
    redis_sentinel_master: str = Field("mymaster", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    redis_sentinel_password: SecretStr | None = None  # the Sentinels' own password, if any
    #: REDIS_URL names one node of a Redis Cluster (any: the clients learn the rest from it).
    redis_cluster: bool = False
    #: Alerts are POSTed here as JSON (a secret: chat webhooks carry their token in the URL).
    alert_webhook_url: SecretStr | None = None
    alert_webhook_timeout_s: float = Field(5.0, gt=0, le=60)
    alert_webhook_retries: int = Field(3, ge=0, le=10)
    alert_interval_s: float = Field(30.0, ge=1, le=3600)  # how often the alert rules run
    alert_failure_rate: float = Field(0.05, gt=0, le=1)  # failed / attempted, last hour
    alert_exclusion_rate: float = Field(0.25, gt=0, le=1)  # excluded / received, last hour
    alert_min_volume: int = Field(100, ge=1)  # below this hourly volume rates are noise
    alert_paused_s: float = Field(900.0, gt=0)  # a 429 pause longer than this alerts
    alert_lag_s: float = Field(900.0, gt=0)  # oldest pending change older than this alerts

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("outreach_api_url", "outreach_authorize_url", "outreach_token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> Settings:
        # A claim is renewed right before its request leaves (app/delivery/patch.py): it must
        # outlast the request, or another drain could send the same prospect meanwhile.
        if self.lease_ms < self.outreach_timeout_s * 1000 + 1000:
            raise ValueError(
                f"LEASE_MS ({self.lease_ms}) must exceed OUTREACH_TIMEOUT_S "
                f"({self.outreach_timeout_s:g} s) by at least 1000 ms: a claim must outlive "
                "the request that sends it"
            )
        return self

    @model_validator(mode="after")
    def _cluster_has_its_own_broker(self) -> Settings:
        if self.redis_cluster:
            for problem in cluster_problems(self):
                raise ValueError(problem)
        return self

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """``API_ALLOWED_HOSTS`` as host names (lower case, no brackets)."""
        names = (h.strip().strip("[]").lower() for h in self.api_allowed_hosts.split(","))
        return frozenset(n for n in names if n)

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or str(self.redis_url)

    @property
    def keys(self) -> keys.Keys:
        return keys.Keys(self.redis_key_prefix, self.metrics_retention_hours)


def cluster_problems(settings: Settings) -> list[str]:
    """Why ``REDIS_CLUSTER=true`` cannot work with these settings (empty: it can). Celery's
    broker (kombu) does not speak Redis Cluster, so it needs a Redis of its own."""
    url = urlsplit(str(settings.redis_url))
    broker = urlsplit(settings.broker_url or "")
    if settings.redis_sentinels:
        return ["REDIS_CLUSTER=true and REDIS_SENTINELS: choose one (a cluster fails over itself)"]
    if url.path.strip("/") not in ("", "0"):
        return [f"REDIS_URL: a Redis Cluster has only database 0, not {url.path.strip('/')}"]
    if not settings.broker_url:
        return [
            "BROKER_URL is required with REDIS_CLUSTER=true: Celery's broker (kombu) does not "
            "speak Redis Cluster, so it needs a Redis (or RabbitMQ) of its own"
        ]
    if "cluster" in broker.scheme or (broker.hostname, broker.port) == (url.hostname, url.port):
        return [
            "BROKER_URL must not name the Redis Cluster (kombu does not speak Redis Cluster): "
            "give Celery a single Redis (or RabbitMQ) of its own"
        ]
    return []


def load_settings() -> Settings:
    """Read and validate the settings, turning pydantic's errors into one readable message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        ]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
