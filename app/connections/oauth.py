"""OAuth 2 with Outreach: the token endpoint client, authorization states, and refresh.

``TokenManager`` hands out each connection's access token and keeps it fresh: it refreshes
before expiry (``TOKEN_REFRESH_MARGIN_S``) and after a 401, with exactly one refresh in flight
per connection across every process and host (a Redis lock, ``SET NX PX`` with a random
token, released by compare-and-delete). Others wait for it, bounded, and use its result: the
connection's token ``generation`` changes. The rotated refresh token is persisted before the
new access token is used. The token endpoint's own 429 is waited out while holding the lock;
``invalid_grant`` makes the connection ``reauth_required``. A refresh that fails for the
moment (5xx, unreachable, 429 beyond the wait) leaves a marker for ``REFRESH_FAILED_MS``: the
processes that waited for it answer "unavailable" without calling the endpoint again.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import redis.asyncio as aioredis
from pydantic import ValidationError

from app.config.destinations import Connection
from app.connections.crypto import TokenDecryptError
from app.connections.records import (
    ACTIVE,
    ConnectionRecord,
    ConnectionStore,
    with_reauth_required,
    with_refreshed,
)
from app.core.keys import Keys
from app.core.scripts import package_scripts
from app.core.settings import Settings
from app.outreach.signals import retry_after_at

log = logging.getLogger(__name__)

#: Backoff between tries when the token endpoint says 429 without a Retry-After.
TOKEN_429_BACKOFF_S = (0.2, 5.0)
#: How often a process waiting for another one's refresh looks again.
LOCK_POLL_S = 0.05
#: The refresh lock outlives the longest refresh by this much (Redis round trips, persisting).
LOCK_MARGIN_S = 10.0
#: After a refresh failed for the moment (token endpoint 5xx, unreachable, 429 beyond the
#: wait), nobody calls the token endpoint for this long: the processes that were waiting for
#: that refresh answer UNAVAILABLE at once instead of each trying again.
REFRESH_FAILED_MS = 5000


def _failed_key(lock_key: str) -> str:
    """Marks a connection whose last refresh failed for the moment (``REFRESH_FAILED_MS``)."""
    return f"{lock_key}:failed"


def connection_metadata(conn_id: str, user: str | None) -> Connection | str:
    """The connection's id and user validated, or the reason they are not valid (for the
    OAuth routes and ``connections authorize``: checked before anything is stored)."""
    try:
        return Connection.model_validate({"id": conn_id, "user": user})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "connection"
        name = "connection" if field == "id" else field
        return f"{name}: {first['msg'].removeprefix('Value error, ')}"


def redirect_uri(settings: Settings) -> str:
    """OUTREACH_REDIRECT_URI, else this API's own ``/oauth/callback``."""
    if settings.outreach_redirect_uri:
        return settings.outreach_redirect_uri
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}/oauth/callback"


#: What Outreach's Bulk API needs beyond writing prospects.
BATCH_SCOPES = ("batches.read", "batches.write")


#: What sequence enrollment needs: enroll and find states, read a user's default mailbox.
SEQUENCE_SCOPES = ("sequences.read", "sequenceStates.all", "mailboxes.read", "users.read")


def scopes(settings: Settings, *, bulk: bool = False, sequences: bool = False) -> str:
    """The scopes to ask for: the configured ones, the batch scopes when a destination of
    the connection uses bulk delivery, the sequence scopes when one enrolls prospects into
    sequences (never otherwise: least privilege)."""
    asked = settings.outreach_scopes.split()
    for extra, wanted in ((BATCH_SCOPES, bulk), (SEQUENCE_SCOPES, sequences)):
        if wanted:
            asked += [s for s in extra if s not in asked]
    return " ".join(asked)


def authorize_url(
    settings: Settings, state: str, *, bulk: bool = False, sequences: bool = False
) -> str:
    """Outreach's authorize page for one authorization attempt."""
    query = {
        "client_id": settings.outreach_client_id or "",
        "redirect_uri": redirect_uri(settings),
        "response_type": "code",
        "scope": scopes(settings, bulk=bulk, sequences=sequences),
        "state": state,
    }
    return f"{settings.outreach_authorize_url}?{urlencode(query)}"


# Token endpoint -------------------------------------------------------------------------


class OAuthError(Exception):
    """The token endpoint did not issue tokens. ``error`` is a short code (OAuth's own, or
    ``http_<status>``/``unreachable``/``bad_response``); never carries a token."""

    def __init__(self, error: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.status = status


class InvalidGrant(OAuthError):
    """The code or refresh token is no longer good: the user must authorize again."""


class TokenEndpointBusy(OAuthError):
    """429 from the token endpoint ("Retry later")."""

    def __init__(self, retry_after_s: float | None) -> None:
        super().__init__("http_429", "the token endpoint asked us to retry later", status=429)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_in_s: float | None
    scope: str | None

    def expires_at(self, now: float) -> float | None:
        return None if self.expires_in_s is None else now + self.expires_in_s

    def __repr__(self) -> str:  # never show the tokens
        return f"TokenSet(expires_in_s={self.expires_in_s!r}, scope={self.scope!r})"


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date)."""
    now = time.time()
    at = retry_after_at(value, now)
    return None if at is None else max(0.0, at - now)


def parse_token_answer(status: int, headers: Mapping[str, str], body: bytes) -> TokenSet:
    """The token endpoint's answer as tokens, or the ``OAuthError`` it means."""
    if status == 429:
        raise TokenEndpointBusy(retry_after_s(headers.get("Retry-After")))
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status >= 400 or not isinstance(doc, dict):
        code = doc.get("error") if isinstance(doc, dict) else None
        if code == "invalid_grant":
            raise InvalidGrant("invalid_grant", "Outreach refused the grant", status=status)
        if isinstance(code, str) and code.replace("_", "").isalnum():
            raise OAuthError(code, f"the token endpoint answered {status}", status=status)
        raise OAuthError(f"http_{status}", "the token endpoint's answer is unusable", status=status)
    access, refresh = doc.get("access_token"), doc.get("refresh_token")
    expires_in, scope = doc.get("expires_in"), doc.get("scope")
    if not isinstance(access, str) or not access:
        raise OAuthError("bad_response", "the token endpoint gave no access_token", status=status)
    return TokenSet(
        access,
        refresh if isinstance(refresh, str) and refresh else None,
        float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None,
        scope if isinstance(scope, str) else None,
    )


class TokenClient:
    """``POST`` to ``OUTREACH_TOKEN_URL`` with the application's credentials."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        timeout_s: float,
    ) -> None:
        self._session = session
        self._url = token_url
        self._client = {"client_id": client_id, "client_secret": client_secret}
        self._redirect_uri = redirect_uri
        #: Longest one POST may take (OUTREACH_TIMEOUT_S).
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def exchange_code(self, code: str, *, deadline: float) -> TokenSet:
        form = {"grant_type": "authorization_code", "code": code}
        return await self._post_waiting({**form, "redirect_uri": self._redirect_uri}, deadline)

    async def refresh(self, refresh_token: str, *, deadline: float) -> TokenSet:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._post_waiting({**form, "redirect_uri": self._redirect_uri}, deadline)

    async def _post_waiting(self, form: dict[str, str], deadline: float) -> TokenSet:
        """Post, waiting out 429s (Retry-After, else backoff) until ``deadline`` (monotonic)."""
        backoff = TOKEN_429_BACKOFF_S[0]
        while True:
            try:
                return await self._post(form)
            except TokenEndpointBusy as exc:
                wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
                wait *= 1 + 0.2 * random.random()
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("token endpoint answered 429; trying again in %.1f s", wait)
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, TOKEN_429_BACKOFF_S[1])

    async def _post(self, form: dict[str, str]) -> TokenSet:
        try:
            async with self._session.post(
                self._url,
                data={**form, **self._client},
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            ) as resp:
                body = await resp.read()
                return parse_token_answer(resp.status, resp.headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception text may name the URL, never a token (they travel in the body).
            raise OAuthError("unreachable", type(exc).__name__) from None


def token_client(session: aiohttp.ClientSession, settings: Settings) -> TokenClient | None:
    """The client of the configured OAuth application; None without one."""
    if not settings.outreach_client_id or settings.outreach_client_secret is None:
        return None
    return TokenClient(
        session,
        token_url=settings.outreach_token_url,
        client_id=settings.outreach_client_id,
        client_secret=settings.outreach_client_secret.get_secret_value(),
        redirect_uri=redirect_uri(settings),
        timeout_s=settings.outreach_timeout_s,
    )


# Authorization states -------------------------------------------------------------------


async def create_state(
    client: aioredis.Redis, keys: Keys, *, connection: str, user: str | None, ttl_s: int
) -> str:
    """A single-use, expiring ``state`` bound to the connection being authorized."""
    state = secrets.token_urlsafe(32)
    doc = json.dumps({"connection": connection, "user": user, "created_at": time.time()})
    await cast("Awaitable[bool]", client.set(keys.oauth_state(state), doc, ex=ttl_s))
    return state


async def take_state(client: aioredis.Redis, keys: Keys, state: str) -> dict[str, Any] | None:
    """The authorization a ``state`` stands for, at most once (GETDEL); None: unknown,
    expired or already used."""
    if not state or len(state) > 200:
        return None
    raw = await cast("Awaitable[bytes | None]", client.getdel(keys.oauth_state(state)))
    return None if raw is None else cast("dict[str, Any]", json.loads(raw))


# Refresh ----------------------------------------------------------------------------------


class RefreshOutcome(enum.Enum):
    #: A newer access token is stored (this process refreshed, or another did meanwhile).
    REFRESHED = "refreshed"
    #: Outreach refused the refresh token: the user must authorize again.
    REAUTH_REQUIRED = "reauth_required"
    #: Not now (token endpoint failing, another refresh took too long): try again later.
    UNAVAILABLE = "unavailable"
    #: This connection cannot be refreshed (no refresh token, or no OAuth application).
    NOT_REFRESHABLE = "not_refreshable"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What a sender needs: the token and its generation, or why nothing may be sent."""

    conn_id: str
    token: str | None
    generation: int
    #: Set when nothing may be sent now: the connection needs re-authorization, has no
    #: token yet, or its expired token could not be refreshed for the moment.
    blocked: str | None = None

    def __repr__(self) -> str:  # never show the token
        return (
            f"AccessToken({self.conn_id!r}, generation={self.generation}, blocked={self.blocked!r})"
        )


class TokenManager:
    """Access tokens of every connection for one process (see the module docstring)."""

    def __init__(
        self,
        store: ConnectionStore,
        client: TokenClient | None,
        *,
        margin_s: float,
        wait_s: float,
    ) -> None:
        self.store = store
        self.client = client
        self.margin_s = margin_s
        self.wait_s = wait_s
        # The lock outlives the longest refresh, so it cannot lapse while one is running: 429s
        # are waited out until ``wait_s`` and the last POST, started just before that, may
        # then take the client's whole timeout (OUTREACH_TIMEOUT_S).
        timeout_s = client.timeout_s if client is not None else 0.0
        self._lock_ms = int((wait_s + timeout_s + LOCK_MARGIN_S) * 1000)
        # Releases the lock only if it is still ours (it may have expired and been retaken).
        self._release = package_scripts("app.core").aio(store.redis, "token_release")
        self._warned: set[str] = set()

    @classmethod
    def from_settings(
        cls, store: ConnectionStore, session: aiohttp.ClientSession | None, settings: Settings
    ) -> TokenManager:
        client = None if session is None else token_client(session, settings)
        return cls(
            store,
            client,
            margin_s=settings.token_refresh_margin_s,
            wait_s=settings.token_refresh_wait_s,
        )

    async def current(self, conn_id: str) -> AccessToken | None:
        """The access token to send with now, refreshed first when it expires within the
        margin; None when the connection does not exist."""
        rec = await self.store.get(conn_id)
        if rec is None:
            return None
        if rec.state != ACTIVE or rec.access_token_enc is None:
            return self._token(rec)
        if rec.expires_at is not None and rec.expires_at - time.time() <= self.margin_s:
            outcome = await self._refresh(rec)
            fresh = await self.store.get(conn_id)
            if fresh is None:
                return None
            expired = fresh.expires_at is not None and fresh.expires_at <= time.time()
            if outcome is not RefreshOutcome.REFRESHED and expired and fresh.state == ACTIVE:
                # Not refreshed and unusable: wait rather than collect a 401 per prospect.
                return AccessToken(conn_id, None, fresh.generation, f"refresh {outcome.value}")
            rec = fresh
        return self._token(rec)

    async def after_unauthorized(self, conn_id: str, generation: int) -> RefreshOutcome:
        """Outreach refused the access token of ``generation`` (a 401)."""
        rec = await self.store.get(conn_id)
        if rec is None:
            return RefreshOutcome.NOT_REFRESHABLE
        if rec.state != ACTIVE:
            return RefreshOutcome.REAUTH_REQUIRED
        if rec.generation != generation:
            return RefreshOutcome.REFRESHED  # someone else already did
        if self.client is None or rec.refresh_token_enc is None:
            # Nothing here can make Outreach take this token again: retrying it until every
            # change becomes a dead letter helps no one. Pause like a refused refresh token.
            why = (
                "it has no refresh token"
                if rec.refresh_token_enc is None
                else "no OAuth application is configured (OUTREACH_CLIENT_ID)"
            )
            return await self._needs_reauth(
                rec,
                f"Outreach refused the access token (401) and {why}: authorize again "
                "(OAuth) or install a new token (outreach-sync connections add)",
            )
        return await self._refresh(rec)

    def _token(self, rec: ConnectionRecord) -> AccessToken:
        if rec.state != ACTIVE:
            return AccessToken(rec.id, None, rec.generation, rec.state)
        if rec.access_token_enc is None:
            return AccessToken(rec.id, None, rec.generation, "not_authorized")
        try:
            token = self.store.cipher.decrypt(rec.access_token_enc)
        except TokenDecryptError as exc:
            log.error("connection %s: %s", rec.id, exc)
            return AccessToken(rec.id, None, rec.generation, "undecryptable")
        return AccessToken(rec.id, token, rec.generation)

    async def _refresh(self, seen: ConnectionRecord) -> RefreshOutcome:
        """Refresh ``seen``'s tokens unless someone already has; one refresh at a time per
        connection everywhere, the others wait (bounded) and take its result."""
        if self.client is None or seen.refresh_token_enc is None:
            self._warn_once(seen.id, "has no refresh token or no OAuth application is set")
            return RefreshOutcome.NOT_REFRESHABLE
        deadline = time.monotonic() + self.wait_s
        lock_key, me = self.store.keys.refresh_lock(seen.id), uuid.uuid4().hex
        while True:
            if await self.store.redis.set(lock_key, me, nx=True, px=self._lock_ms):
                try:
                    return await self._refresh_locked(seen, deadline)
                finally:
                    await self._release(keys=[lock_key], args=[me])
            await asyncio.sleep(LOCK_POLL_S)
            rec = await self.store.get(seen.id)
            if rec is None or rec.state != ACTIVE:
                return RefreshOutcome.REAUTH_REQUIRED if rec else RefreshOutcome.NOT_REFRESHABLE
            if rec.generation != seen.generation:
                return RefreshOutcome.REFRESHED
            if time.monotonic() > deadline:
                log.warning("connection %s: another process's token refresh timed out", seen.id)
                return RefreshOutcome.UNAVAILABLE

    async def _refresh_locked(self, seen: ConnectionRecord, deadline: float) -> RefreshOutcome:
        rec = await self.store.get(seen.id)
        if rec is None or rec.state != ACTIVE:
            return RefreshOutcome.REAUTH_REQUIRED if rec else RefreshOutcome.NOT_REFRESHABLE
        if rec.generation != seen.generation:
            return RefreshOutcome.REFRESHED  # done while we waited for the lock
        if rec.refresh_token_enc is None or self.client is None:
            return RefreshOutcome.NOT_REFRESHABLE
        failed_key = _failed_key(self.store.keys.refresh_lock(rec.id))
        if await self.store.redis.exists(failed_key):
            # A refresh failed a moment ago (the one we were waiting for, perhaps): the
            # token endpoint is not asked again before the marker expires.
            return RefreshOutcome.UNAVAILABLE
        try:
            refresh_token = self.store.cipher.decrypt(rec.refresh_token_enc)
            tokens = await self.client.refresh(refresh_token, deadline=deadline)
        except TokenDecryptError as exc:
            log.error("connection %s: %s", rec.id, exc)
            return RefreshOutcome.UNAVAILABLE
        except InvalidGrant:
            return await self._needs_reauth(
                rec, "Outreach refused the refresh token (invalid_grant): authorize again"
            )
        except OAuthError as exc:
            log.error("connection %s: token refresh failed: %s", rec.id, exc)
            # Set while the lock is still held, so whoever takes it next sees it.
            await self.store.redis.set(failed_key, 1, px=REFRESH_FAILED_MS)
            return RefreshOutcome.UNAVAILABLE
        return await self._persist(rec, tokens)

    async def _persist(self, rec: ConnectionRecord, tokens: TokenSet) -> RefreshOutcome:
        """Store the new pair before anyone uses it: the old refresh token is dead now."""
        now = time.time()

        def change(old: ConnectionRecord | None) -> ConnectionRecord | None:
            if old is None or old.generation != rec.generation:
                return None  # deleted or re-authorized meanwhile: the newer tokens win
            return with_refreshed(
                old,
                self.store.cipher,
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at(now),
                scope=tokens.scope,
                now=now,
            )

        await self.store.update(rec.id, change)
        log.info("connection %s: access token refreshed", rec.id)
        return RefreshOutcome.REFRESHED

    async def _needs_reauth(self, rec: ConnectionRecord, reason: str) -> RefreshOutcome:
        now, changed = time.time(), False

        def change(old: ConnectionRecord | None) -> ConnectionRecord | None:
            nonlocal changed
            changed = old is not None and old.generation == rec.generation and old.state == ACTIVE
            return with_reauth_required(old, reason, now=now) if changed and old else None

        new = await self.store.update(rec.id, change)
        if changed:
            # Logged once per incident: only the process that made the transition logs it.
            log.error(
                "connection %s (user %s) needs re-authorization: %s; its destinations are "
                "paused and keep their changes",
                rec.id,
                rec.user,
                reason,
            )
        if new is not None and new.generation == rec.generation and new.state != ACTIVE:
            return RefreshOutcome.REAUTH_REQUIRED
        return RefreshOutcome.REFRESHED  # re-authorized while we refreshed

    def _warn_once(self, conn_id: str, why: str) -> None:
        if conn_id not in self._warned:
            self._warned.add(conn_id)
            log.warning("connection %s: access token cannot be refreshed: it %s", conn_id, why)
