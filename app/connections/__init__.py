"""Outreach connections: records in Redis, tokens encrypted at rest, OAuth and refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.connections.crypto import (
        DEVELOPMENT_ONLY_INSECURE_KEY,
        EncryptionKeyError,
        TokenCipher,
        TokenDecryptError,
        cipher_for,
        default_cipher,
        new_key,
        parse_keys,
    )
    from app.connections.oauth import (
        AccessToken,
        OAuthError,
        RefreshOutcome,
        TokenManager,
        authorize_url,
        connection_metadata,
        create_state,
        retry_after_s,
        scopes,
        take_state,
        token_client,
    )
    from app.connections.records import (
        REAUTH_REQUIRED,
        ConflictError,
        ConnectionRecord,
        ConnectionStore,
        ConnectionStoreSync,
        connection_states_sync,
        stored_metadata,
        with_reauth_required,
    )

_EXPORTS = {
    "AccessToken": "app.connections.oauth",
    "ConflictError": "app.connections.records",
    "ConnectionRecord": "app.connections.records",
    "ConnectionStore": "app.connections.records",
    "ConnectionStoreSync": "app.connections.records",
    "DEVELOPMENT_ONLY_INSECURE_KEY": "app.connections.crypto",
    "EncryptionKeyError": "app.connections.crypto",
    "OAuthError": "app.connections.oauth",
    "REAUTH_REQUIRED": "app.connections.records",
    "RefreshOutcome": "app.connections.oauth",
    "TokenCipher": "app.connections.crypto",
    "TokenDecryptError": "app.connections.crypto",
    "TokenManager": "app.connections.oauth",
    "authorize_url": "app.connections.oauth",
    "cipher_for": "app.connections.crypto",
    "connection_metadata": "app.connections.oauth",
    "connection_states_sync": "app.connections.records",
    "create_state": "app.connections.oauth",
    "default_cipher": "app.connections.crypto",
    "new_key": "app.connections.crypto",
    "parse_keys": "app.connections.crypto",
    "retry_after_s": "app.connections.oauth",
    "scopes": "app.connections.oauth",
    "stored_metadata": "app.connections.records",
    "take_state": "app.connections.oauth",
    "token_client": "app.connections.oauth",
    "with_reauth_required": "app.connections.records",
}

__all__ = [
    "DEVELOPMENT_ONLY_INSECURE_KEY",
    "REAUTH_REQUIRED",
    "AccessToken",
    "ConflictError",
    "ConnectionRecord",
    "ConnectionStore",
    "ConnectionStoreSync",
    "EncryptionKeyError",
    "OAuthError",
    "RefreshOutcome",
    "TokenCipher",
    "TokenDecryptError",
    "TokenManager",
    "authorize_url",
    "cipher_for",
    "connection_metadata",
    "connection_states_sync",
    "create_state",
    "default_cipher",
    "new_key",
    "parse_keys",
    "retry_after_s",
    "scopes",
    "stored_metadata",
    "take_state",
    "token_client",
    "with_reauth_required",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
