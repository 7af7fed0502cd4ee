"""Tokens at rest: Fernet encryption with key rotation (``TOKEN_ENCRYPTION_KEY``).

The setting holds one or more Fernet keys, comma-separated. The first encrypts; every one
decrypts, so a new key is rolled out by putting it first and keeping the old one until
``outreach-sync connections reencrypt`` has rewritten every stored token.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.core.redaction import remember_secret

if TYPE_CHECKING:
    from app.core.settings import Settings

log = logging.getLogger(__name__)

#: Used only in development when TOKEN_ENCRYPTION_KEY is unset (startup warns, production
#: refuses): it is public, so tokens encrypted with it are as good as clear text.
DEVELOPMENT_ONLY_INSECURE_KEY = base64.urlsafe_b64encode(b"outreach-sync-DEVELOPMENT-ONLY!!")


class EncryptionKeyError(ValueError):
    """TOKEN_ENCRYPTION_KEY cannot be used; the message says which key and why (never a key)."""


class TokenDecryptError(Exception):
    """A stored token could not be decrypted: none of the configured keys encrypted it."""


def parse_keys(raw: str) -> list[Fernet]:
    """The Fernet keys of a TOKEN_ENCRYPTION_KEY value, in order."""
    parts = [p.strip() for p in raw.split(",")]
    if not any(parts):
        raise EncryptionKeyError("TOKEN_ENCRYPTION_KEY is empty")
    keys: list[Fernet] = []
    for i, part in enumerate(parts, start=1):
        if not part:
            raise EncryptionKeyError(f"TOKEN_ENCRYPTION_KEY: key {i} of {len(parts)} is empty")
        try:
            keys.append(Fernet(part))
        except (ValueError, TypeError):
            raise EncryptionKeyError(
                f"TOKEN_ENCRYPTION_KEY: key {i} of {len(parts)} is not a Fernet key "
                "(32 random bytes, url-safe base64; make one with `outreach-sync connections "
                "new-key`)"
            ) from None
    return keys


def new_key() -> str:
    """A fresh random Fernet key."""
    return Fernet.generate_key().decode()


class TokenCipher:
    """Encrypts and decrypts token strings; never puts a token into an exception."""

    def __init__(self, keys: list[Fernet], *, development: bool = False) -> None:
        self._fernet = MultiFernet(keys)
        #: True when the public development key is in use.
        self.development = development

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, blob: str) -> str:
        try:
            token = self._fernet.decrypt(blob.encode()).decode()
        except (InvalidToken, ValueError, TypeError):
            raise TokenDecryptError(
                "a stored token cannot be decrypted with TOKEN_ENCRYPTION_KEY "
                "(was the key that encrypted it removed?)"
            ) from None
        # A token in clear is known from here on, so logs and Sentry events redact it by value.
        remember_secret(token)
        return token

    def rotate(self, blob: str) -> str:
        """The same token encrypted with the first key."""
        try:
            return self._fernet.rotate(blob.encode()).decode()
        except (InvalidToken, ValueError, TypeError):
            raise TokenDecryptError(
                "a stored token cannot be decrypted with TOKEN_ENCRYPTION_KEY"
            ) from None


def cipher_for(settings: Settings) -> TokenCipher:
    """The cipher of these settings; the development key when none is set in development.

    Outside development a missing key is an ``EncryptionKeyError``: tokens must never be
    stored under the public development key (the CLI reaches here without the startup check).
    """
    secret = settings.token_encryption_key
    if secret is None:
        if settings.app_env != "development":
            raise EncryptionKeyError(
                f"TOKEN_ENCRYPTION_KEY is required with APP_ENV={settings.app_env} (tokens are "
                "stored encrypted; make a key with `outreach-sync connections new-key`)"
            )
        return TokenCipher([Fernet(DEVELOPMENT_ONLY_INSECURE_KEY)], development=True)
    return TokenCipher(parse_keys(secret.get_secret_value()))


def default_cipher() -> TokenCipher:
    """The cipher of the process's settings (for callers that were given none)."""
    from app.core.settings import get_settings

    return cipher_for(get_settings())
