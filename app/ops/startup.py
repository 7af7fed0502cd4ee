"""What must hold before the API or a worker starts.

Outside development the service refuses to start without ``TOKEN_ENCRYPTION_KEY`` (tokens at
rest) and a strong ``ADMIN_API_KEY`` (the admin surface and the OAuth start). In development a
missing key means the public development key and an open admin surface: the API then listens
on loopback only (it refuses any other address) and says so in a warning at start.
"""

from __future__ import annotations

import ipaddress
import logging

from app.connections.crypto import DEVELOPMENT_ONLY_INSECURE_KEY, EncryptionKeyError, parse_keys
from app.core.settings import Settings, SettingsError

log = logging.getLogger(__name__)

DEVELOPMENT = "development"
#: An admin key shorter than this, or made of fewer distinct characters, is refused in
#: production: it guards tokens and every destination, and can be guessed offline from nothing.
ADMIN_KEY_MIN_CHARS = 24
ADMIN_KEY_MIN_DISTINCT = 10
OPEN_ADMIN = (
    "ADMIN_API_KEY is not set: the admin API, /status, /metrics and /oauth/start answer "
    "anyone who can reach the API, without a key (development only; listening on loopback)"
)


class StartupRefused(SettingsError):
    """The settings are not safe for this environment; the message names every problem."""


def startup_problems(settings: Settings) -> list[str]:
    """Every reason the service must not start with these settings (empty: it may)."""
    problems: list[str] = []
    production = settings.app_env != DEVELOPMENT
    key = settings.token_encryption_key
    if key is not None:
        try:
            parse_keys(key.get_secret_value())
        except EncryptionKeyError as exc:
            problems.append(str(exc))
    if production:
        where = f"APP_ENV={settings.app_env}"
        if key is None:
            problems.append(
                f"TOKEN_ENCRYPTION_KEY is required with {where} (tokens are stored encrypted; "
                "make a key with `outreach-sync connections new-key`)"
            )
        elif DEVELOPMENT_ONLY_INSECURE_KEY.decode() in key.get_secret_value():
            problems.append(
                f"TOKEN_ENCRYPTION_KEY must not be the public development key ({where})"
            )
        admin = settings.admin_api_key
        if admin is None:
            problems.append(f"ADMIN_API_KEY is required with {where} (it guards the admin API)")
        elif not strong_admin_key(admin.get_secret_value()):
            problems.append(
                f"ADMIN_API_KEY is too weak for {where}: use at least {ADMIN_KEY_MIN_CHARS} "
                f"characters, {ADMIN_KEY_MIN_DISTINCT} of them different "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if settings.outreach_client_id and not settings.outreach_redirect_uri:
            problems.append(
                f"OUTREACH_REDIRECT_URI is required with {where} when OUTREACH_CLIENT_ID is set "
                "(the public https URL of /oauth/callback registered with Outreach)"
            )
    return problems


def strong_admin_key(key: str) -> bool:
    """Long and varied enough not to be guessed (``secrets.token_urlsafe(32)`` is)."""
    return len(key) >= ADMIN_KEY_MIN_CHARS and len(set(key)) >= ADMIN_KEY_MIN_DISTINCT


def open_admin(settings: Settings) -> bool:
    """True in development without ``ADMIN_API_KEY``: the admin surface answers anyone."""
    return settings.app_env == DEVELOPMENT and settings.admin_api_key is None


def exposure_problems(settings: Settings, host: str) -> list[str]:
    """Why the API must not listen on ``host`` (empty: it may); checked where the address is
    known (``outreach-sync api``), not by workers, which listen nowhere."""
    if not open_admin(settings) or is_loopback(host):
        return []
    return [
        f"API host {host!r} is not a loopback address and ADMIN_API_KEY is not set: the "
        "admin API would be open to the network. Set ADMIN_API_KEY, or listen on 127.0.0.1"
    ]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_startup(settings: Settings, *, serves_api: bool = True) -> None:
    """Raise ``StartupRefused`` naming every problem; warn about development shortcuts (the
    open admin surface only where it is served: a worker listens on nothing)."""
    problems = startup_problems(settings)
    if problems:
        raise StartupRefused("refusing to start:\n  " + "\n  ".join(problems))
    if settings.app_env == DEVELOPMENT and settings.token_encryption_key is None:
        log.warning(
            "TOKEN_ENCRYPTION_KEY is not set: tokens are encrypted with the public "
            "DEVELOPMENT_ONLY_INSECURE_KEY (development only; production refuses to start)"
        )
    if serves_api and open_admin(settings):
        log.warning("%s\n%s\n%s", "!" * 78, OPEN_ADMIN, "!" * 78)
