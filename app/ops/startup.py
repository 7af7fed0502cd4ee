"""What must hold before the API or a worker starts.

Outside development the service refuses to start without ``TOKEN_ENCRYPTION_KEY`` (tokens at
rest) and ``ADMIN_API_KEY`` (the admin surface and the OAuth start). In development a missing
key means the public development key and an open admin surface, said once in a warning.
"""

from __future__ import annotations

import logging

from app.connections.crypto import DEVELOPMENT_ONLY_INSECURE_KEY, EncryptionKeyError, parse_keys
from app.core.settings import Settings, SettingsError

log = logging.getLogger(__name__)

DEVELOPMENT = "development"


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
        if settings.admin_api_key is None:
            problems.append(f"ADMIN_API_KEY is required with {where} (it guards the admin API)")
        if settings.outreach_client_id and not settings.outreach_redirect_uri:
            problems.append(
                f"OUTREACH_REDIRECT_URI is required with {where} when OUTREACH_CLIENT_ID is set "
                "(the public https URL of /oauth/callback registered with Outreach)"
            )
    return problems


def check_startup(settings: Settings) -> None:
    """Raise ``StartupRefused`` naming every problem; warn about development shortcuts."""
    problems = startup_problems(settings)
    if problems:
        raise StartupRefused("refusing to start:\n  " + "\n  ".join(problems))
    if settings.app_env == DEVELOPMENT and settings.token_encryption_key is None:
        log.warning(
            "TOKEN_ENCRYPTION_KEY is not set: tokens are encrypted with the public "
            "DEVELOPMENT_ONLY_INSECURE_KEY (development only; production refuses to start)"
        )
