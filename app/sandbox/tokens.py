"""OAuth authorization codes, access tokens and rotating refresh tokens, in memory."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from app.sandbox.quota import Clock
from app.sandbox.scopes import ALL_SCOPES

CODE_TTL_S = 600.0


@dataclass(slots=True)
class Grant:
    """One authorization of a user; revoking it kills all of its tokens."""

    user: str
    scope: str
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class _Access:
    grant: Grant
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    scope: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """A token endpoint answer."""

    access_token: str
    refresh_token: str
    expires_in: int
    scope: str
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """The OAuth token response body."""
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
            "created_at": self.created_at,
        }


class TokenStore:
    """Issues and checks tokens; a refresh always rotates the refresh token."""

    def __init__(self, access_ttl_s: int, clock: Clock = time.time) -> None:
        self.access_ttl_s = access_ttl_s
        self._clock = clock
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, Grant] = {}
        self._static: dict[str, Grant] = {}

    def set_static(self, tokens: dict[str, str], scope: str = ALL_SCOPES) -> None:
        """Never-expiring access tokens (token -> user); unchanged ones keep their state."""
        kept = {
            t: g for t, g in self._static.items() if (tokens.get(t), scope) == (g.user, g.scope)
        }
        self._static = {t: kept.get(t) or Grant(user, scope) for t, user in tokens.items()}

    def issue_code(self, client_id: str, redirect_uri: str, user: str, scope: str) -> str:
        """A single-use authorization code."""
        code = secrets.token_urlsafe(18)
        expires_at = self._clock() + CODE_TTL_S
        self._codes[code] = _Code(client_id, redirect_uri, user, scope, expires_at)
        return code

    def redeem_code(self, code: str, client_id: str, redirect_uri: str) -> IssuedTokens | None:
        """Exchange a code; any failed attempt also burns it."""
        found = self._codes.pop(code, None)
        if found is None or found.expires_at <= self._clock():
            return None
        if (found.client_id, found.redirect_uri) != (client_id, redirect_uri):
            return None
        return self._issue(Grant(found.user, found.scope))

    def refresh(self, refresh_token: str) -> IssuedTokens | None:
        """Rotate: the given refresh token becomes invalid, a new pair is issued."""
        grant = self._refresh.pop(refresh_token, None)
        if grant is None or grant.revoked:
            return None
        return self._issue(grant)

    def register(
        self,
        access_token: str,
        user: str,
        expires_in: int | None,
        refresh_token: str | None,
        scope: str = ALL_SCOPES,
    ) -> float | None:
        """Install tokens directly; returns the access token's expiry epoch (None: never)."""
        grant = Grant(user, scope)
        expires_at = None if expires_in is None else self._clock() + expires_in
        self._access[access_token] = _Access(grant, expires_at)
        if refresh_token is not None:
            self._refresh[refresh_token] = grant
        return expires_at

    def user_for(self, access_token: str | None) -> str | None:
        """The user an access token acts for, or None if unknown, expired or revoked."""
        grant = self.grant_for(access_token)
        return None if grant is None else grant.user

    def grant_for(self, access_token: str | None) -> Grant | None:
        """The live grant behind an access token, or None if unknown, expired or revoked."""
        if access_token is None:
            return None
        static = self._static.get(access_token)
        if static is not None:
            return None if static.revoked else static
        found = self._access.get(access_token)
        if found is None or found.grant.revoked:
            return None
        if found.expires_at is not None and found.expires_at <= self._clock():
            del self._access[access_token]
            return None
        return found.grant

    def revoke_refresh(self, refresh_token: str) -> int:
        """Revoke the grant behind a refresh token; returns how many grants were revoked."""
        grant = self._refresh.pop(refresh_token, None)
        if grant is None or grant.revoked:
            return 0
        grant.revoked = True
        return 1

    def revoke_user(self, user: str) -> int:
        """Revoke every grant of a user, static tokens included."""
        grants = [*self._refresh.values(), *self._static.values()]
        grants += [a.grant for a in self._access.values()]
        hit = {id(g): g for g in grants if g.user == user and not g.revoked}
        for grant in hit.values():
            grant.revoked = True
        return len(hit)

    def _issue(self, grant: Grant) -> IssuedTokens:
        now = self._clock()
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._access[access] = _Access(grant, now + self.access_ttl_s)
        self._refresh[refresh] = grant
        return IssuedTokens(access, refresh, self.access_ttl_s, grant.scope, int(now))
