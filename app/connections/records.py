"""Outreach connections in Redis: metadata, encrypted tokens, expiry and state.

One JSON record per connection in the ``connections`` hash. Tokens are stored only as
Fernet ciphertext (app/connections/crypto.py). Every write is a compare-and-set on the record's
``revision`` (``lua/conn_put.lua``), so a token refresh, an OAuth callback and a
configuration load never overwrite one another. ``generation`` changes whenever the tokens
do: a process that saw a 401 with generation N knows a newer token exists when it reads N+1.

A connection is ``active`` or ``reauth_required`` (Outreach refused its refresh token: the
user must authorize again). Its destinations send nothing meanwhile; installing new tokens
(OAuth callback, ``connections add``, a configuration file with tokens) makes it active and
wakes them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, SecretStr

from app.config.broken import Broken, broken, why_unreadable
from app.config.destinations import Connection
from app.connections.crypto import TokenCipher
from app.core.errors import UnreadableRecord
from app.core.keys import DEFAULT_RATE_LIMIT, Keys
from app.core.operations import Commands, Eval, Op, Pipeline, run_async, run_sync
from app.core.scripts import package_scripts
from app.core.wake import queue_wake

log = logging.getLogger(__name__)

State = Literal["active", "reauth_required"]
ACTIVE: State = "active"
REAUTH_REQUIRED: State = "reauth_required"
#: Compare-and-set attempts before a write gives up (each conflict means another writer won).
CAS_ATTEMPTS = 20

SCRIPTS = package_scripts("app.connections")


class ConnectionRecord(BaseModel):
    """The stored form of a connection: never holds a token in clear."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    id: str
    user: str
    rate_limit: str = DEFAULT_RATE_LIMIT
    reserve_share: float = 0.0
    access_token_enc: str | None = None
    refresh_token_enc: str | None = None
    #: Epoch seconds the access token stops working (None: unknown or never).
    expires_at: float | None = None
    scope: str | None = None
    state: State = ACTIVE
    reason: str | None = None
    updated_at: float = 0.0
    generation: int = 0
    revision: int = 0
    #: Who installed the tokens: config, cli or oauth.
    source: str = "config"

    def metadata(self) -> Connection:
        """The connection without tokens."""
        return Connection.model_validate(
            {
                "id": self.id,
                "user": self.user,
                "rate_limit": self.rate_limit,
                "reserve_share": float(self.reserve_share),
            }
        )

    def connection(self, cipher: TokenCipher) -> Connection:
        """The connection with its tokens decrypted (raises ``TokenDecryptError``)."""
        tokens: dict[str, SecretStr | None] = {
            "access_token": _open(cipher, self.access_token_enc),
            "refresh_token": _open(cipher, self.refresh_token_enc),
        }
        return self.metadata().model_copy(update=tokens)

    def public(self) -> dict[str, Any]:
        """What operators may see: everything but the tokens."""
        return {
            "id": self.id,
            "user": self.user,
            "rate_limit": self.rate_limit,
            "reserve_share": self.reserve_share,
            "state": self.state,
            "reason": self.reason,
            "expires_at": _iso(self.expires_at),
            "has_access_token": self.access_token_enc is not None,
            "has_refresh_token": self.refresh_token_enc is not None,
            "scope": self.scope,
            "source": self.source,
            "generation": self.generation,
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A connection's health as alerts and status pages read it."""

    id: str
    user: str
    state: State
    reason: str | None
    updated_at: float
    expires_at: float | None


def _open(cipher: TokenCipher, blob: str | None) -> SecretStr | None:
    return None if blob is None else SecretStr(cipher.decrypt(blob))


def _seal(cipher: TokenCipher, token: str | SecretStr | None) -> str | None:
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    return None if token is None else cipher.encrypt(token)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse_record(raw: bytes | str, cipher: TokenCipher) -> ConnectionRecord:
    """A stored record; a plaintext one written before tokens were encrypted is read (and
    encrypted in memory) so that its next write, or ``connections reencrypt``, seals it."""
    doc = json.loads(raw)
    if "access_token" in doc or "refresh_token" in doc:
        doc["access_token_enc"] = _seal(cipher, doc.pop("access_token", None))
        doc["refresh_token_enc"] = _seal(cipher, doc.pop("refresh_token", None))
    return ConnectionRecord.model_validate(doc)


# Pure transitions ------------------------------------------------------------------------


def with_metadata(
    old: ConnectionRecord | None, meta: Connection, *, now: float
) -> ConnectionRecord:
    """``meta``'s user, rate limit and reserve share; tokens and state kept."""
    fields = {
        "user": meta.user,
        "rate_limit": meta.rate_limit,
        "reserve_share": meta.reserve_share,
        "updated_at": now,
    }
    if old is None:
        return ConnectionRecord.model_validate({"id": meta.id, **fields})
    return old.model_copy(update={**fields, "revision": old.revision + 1})


def with_tokens(
    old: ConnectionRecord | None,
    meta: Connection,
    cipher: TokenCipher,
    *,
    access_token: str | SecretStr | None,
    refresh_token: str | SecretStr | None,
    expires_at: float | None,
    scope: str | None,
    source: str,
    now: float,
) -> ConnectionRecord:
    """New tokens: a new generation, and the connection active again."""
    base = with_metadata(old, meta, now=now)
    return base.model_copy(
        update={
            "access_token_enc": _seal(cipher, access_token),
            "refresh_token_enc": _seal(cipher, refresh_token),
            "expires_at": expires_at,
            "scope": scope,
            "state": ACTIVE,
            "reason": None,
            "source": source,
            "generation": (old.generation + 1) if old else 1,
        }
    )


def with_refreshed(
    old: ConnectionRecord,
    cipher: TokenCipher,
    *,
    access_token: str,
    refresh_token: str | None,
    expires_at: float | None,
    scope: str | None,
    now: float,
) -> ConnectionRecord:
    """A refresh's result: the rotated refresh token replaces the old one."""
    return old.model_copy(
        update={
            "access_token_enc": _seal(cipher, access_token),
            "refresh_token_enc": _seal(cipher, refresh_token) or old.refresh_token_enc,
            "expires_at": expires_at,
            "scope": scope or old.scope,
            "state": ACTIVE,
            "reason": None,
            "updated_at": now,
            "generation": old.generation + 1,
            "revision": old.revision + 1,
        }
    )


def with_reauth_required(old: ConnectionRecord, reason: str, *, now: float) -> ConnectionRecord:
    return old.model_copy(
        update={
            "state": REAUTH_REQUIRED,
            "reason": reason,
            "updated_at": now,
            "revision": old.revision + 1,
        }
    )


Change = Callable[[ConnectionRecord | None], ConnectionRecord | None]


class ConflictError(RuntimeError):
    """A connection kept changing under a write (should never happen in practice)."""


def _expected(old: ConnectionRecord | None) -> int:
    return -1 if old is None else old.revision


def _destinations_of(raw: dict[bytes, bytes], conn_id: str) -> list[str]:
    out = []
    for dest_id, doc in raw.items():
        try:
            parsed = json.loads(doc)
        except ValueError:
            continue  # a broken destination record: it is reported where destinations are read
        if isinstance(parsed, dict) and parsed.get("connection") == conn_id:
            out.append(dest_id.decode())
    return sorted(out)


def _readable(conn_id: str, raw: bytes, cipher: TokenCipher) -> ConnectionRecord:
    """``parse_record``, or ``UnreadableRecord`` naming what is wrong (never the record)."""
    try:
        return parse_record(raw, cipher)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnreadableRecord("connection", conn_id, why_unreadable(exc)) from None


def _stored_revision(raw: bytes) -> int:
    """The revision ``conn_put.lua`` sees in a stored record (0 when it has none)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return 0
    rev = doc.get("revision") if isinstance(doc, dict) else None
    return rev if isinstance(rev, int) and not isinstance(rev, bool) else 0


def _state(rec: ConnectionRecord) -> ConnectionState:
    return ConnectionState(rec.id, rec.user, rec.state, rec.reason, rec.updated_at, rec.expires_at)


def blocked(rec: ConnectionRecord | None) -> bool:
    """True when the connection cannot send: absent, needing re-authorization, or without an
    access token."""
    return rec is None or rec.state != ACTIVE or rec.access_token_enc is None


def unblocks(old: ConnectionRecord | None, new: ConnectionRecord | None) -> bool:
    """True when a write takes the connection from blocked to able to send: only then are its
    destinations resumed (a resume restarts their changes' retry age, so merely rewriting an
    active connection, as every ``config load`` does, must not)."""
    return blocked(old) and not blocked(new)


def _queue_resume(pipe: Pipeline, keys: Keys, dests: list[str]) -> None:
    """Queue the resume of ``dests``: hold lifted, the resume time recorded (time spent
    blocked does not count against retry age), dispatchers woken."""
    now_ms = int(time.time() * 1000)
    for dest in dests:
        pipe.delete(keys.hold(dest))
        pipe.set(keys.resumed(dest), now_ms)
    queue_wake(pipe, keys, *dests)


#: The metadata to install as a function of the stored record (read inside the CAS).
MetaOf = Callable[[ConnectionRecord | None], Connection]


class _TokenWrite:
    """One installation of new tokens, as a compare-and-set ``change``; remembers whether
    the write that won unblocked the connection."""

    def __init__(
        self,
        meta: Connection,
        metadata: MetaOf | None,
        cipher: TokenCipher,
        access_token: str | SecretStr | None,
        refresh_token: str | SecretStr | None,
        expires_at: float | None,
        scope: str | None,
        source: str,
    ) -> None:
        self.conn_id = meta.id
        self._meta = metadata or (lambda _: meta)
        self._cipher = cipher
        self._tokens = (access_token, refresh_token)
        self._expires_at = expires_at
        self._scope = scope
        self._source = source
        self.unblocked = False

    def change(self, old: ConnectionRecord | None) -> ConnectionRecord:
        new = with_tokens(
            old,
            self._meta(old),
            self._cipher,
            access_token=self._tokens[0],
            refresh_token=self._tokens[1],
            expires_at=self._expires_at,
            scope=self._scope,
            source=self._source,
            now=time.time(),
        )
        # Each retry of the CAS recomputes it: the last call is the write that won.
        self.unblocked = unblocks(old, new)
        return new


# The operations, written once (app/core/operations.py) ------------------------------------


class _Operations:
    """What the two adapters below do, each as an operation they run with their client."""

    keys: Keys
    cipher: TokenCipher

    def _get(self, conn_id: str) -> Op[ConnectionRecord | None]:
        """The record (None: absent); ``UnreadableRecord`` when it cannot be read."""
        [raw] = yield Commands(lambda pipe: pipe.hget(self.keys.connections(), conn_id))
        return None if raw is None else _readable(conn_id, raw, self.cipher)

    def _scan(self) -> Op[tuple[list[ConnectionRecord], list[Broken]]]:
        [raw] = yield Commands(lambda pipe: pipe.hgetall(self.keys.connections()))
        good, bad = [], []
        for key, doc in raw.items():
            conn_id = key.decode(errors="replace")
            try:
                good.append(_readable(conn_id, doc, self.cipher))
            except UnreadableRecord as exc:
                bad.append(broken("connection", conn_id, exc))
        return sorted(good, key=lambda r: r.id), sorted(bad, key=lambda b: b.id)

    def _all(self) -> Op[list[ConnectionRecord]]:
        return (yield from self._scan())[0]

    def _broken(self) -> Op[list[Broken]]:
        return (yield from self._scan())[1]

    def _exists(self, conn_id: str) -> Op[bool]:
        [n] = yield Commands(lambda pipe: pipe.hexists(self.keys.connections(), conn_id))
        return bool(n)

    def _current(self, conn_id: str) -> Op[tuple[ConnectionRecord | None, int]]:
        """The record to change and the revision to expect; a broken record is replaced
        (the change sees None, as for a new connection)."""
        [raw] = yield Commands(lambda pipe: pipe.hget(self.keys.connections(), conn_id))
        if raw is None:
            return None, -1
        try:
            old = _readable(conn_id, raw, self.cipher)
        except UnreadableRecord:
            return None, _stored_revision(raw)
        return old, _expected(old)

    def _update(self, conn_id: str, change: Change) -> Op[ConnectionRecord | None]:
        for _ in range(CAS_ATTEMPTS):
            old, expected = yield from self._current(conn_id)
            new = change(old)
            if new is None:
                return old
            args = [conn_id, expected, new.model_dump_json()]
            if (yield Eval(SCRIPTS, "conn_put", [self.keys.connections()], args)):
                return new
        raise ConflictError(f"connection {conn_id} changed {CAS_ATTEMPTS} times during a write")

    def _delete(self, conn_id: str) -> Op[bool]:
        [n] = yield Commands(lambda pipe: pipe.hdel(self.keys.connections(), conn_id))
        return bool(n)

    def _destinations(self, conn_id: str) -> Op[list[str]]:
        [raw] = yield Commands(lambda pipe: pipe.hgetall(self.keys.destinations()))
        return _destinations_of(raw, conn_id)

    def _resume(self, conn_id: str) -> Op[list[str]]:
        dests = yield from self._destinations(conn_id)
        if dests:
            yield Commands(lambda pipe: _queue_resume(pipe, self.keys, dests))
        return dests

    def _install(self, write: _TokenWrite) -> Op[ConnectionRecord]:
        rec = yield from self._update(write.conn_id, write.change)
        assert rec is not None
        if write.unblocked:
            yield from self._resume(rec.id)
        return rec

    def _publish(self, conn: Connection) -> Op[bool]:
        if conn.access_token is None and conn.refresh_token is None:
            yield from self._update(conn.id, lambda old: with_metadata(old, conn, now=time.time()))
            return False
        write = _TokenWrite(
            conn, None, self.cipher, conn.access_token, conn.refresh_token, None, None, "config"
        )
        yield from self._update(conn.id, write.change)
        return write.unblocked

    def _reencrypt(self) -> Op[int]:
        def change(old: ConnectionRecord | None) -> ConnectionRecord | None:
            if old is None:
                return None
            return old.model_copy(
                update={
                    "access_token_enc": _rotate(self.cipher, old.access_token_enc),
                    "refresh_token_enc": _rotate(self.cipher, old.refresh_token_enc),
                    "revision": old.revision + 1,
                }
            )

        done = 0
        for rec in (yield from self._all()):
            if (yield from self._update(rec.id, change)) is not None:
                done += 1
        return done


def _rotate(cipher: TokenCipher, blob: str | None) -> str | None:
    return None if blob is None else cipher.rotate(blob)


# Synchronous adapter (CLI, configuration load) --------------------------------------------


class ConnectionStoreSync(_Operations):
    def __init__(self, client: redis.Redis, keys: Keys, cipher: TokenCipher) -> None:
        self.redis = client
        self.keys = keys
        self.cipher = cipher

    def get(self, conn_id: str) -> ConnectionRecord | None:
        return run_sync(self.redis, self._get(conn_id))

    def all(self) -> list[ConnectionRecord]:
        """Every record that can be read (``broken`` lists the others)."""
        return run_sync(self.redis, self._all())

    def broken(self) -> list[Broken]:
        return run_sync(self.redis, self._broken())

    def exists(self, conn_id: str) -> bool:
        """Whether a record is stored (readable or not: a broken one can be removed)."""
        return run_sync(self.redis, self._exists(conn_id))

    def update(self, conn_id: str, change: Change) -> ConnectionRecord | None:
        """Apply ``change`` to the current record (compare-and-set, retried on conflict);
        ``change`` returning None leaves the record as it is."""
        return run_sync(self.redis, self._update(conn_id, change))

    def delete(self, conn_id: str) -> bool:
        return run_sync(self.redis, self._delete(conn_id))

    def destinations(self, conn_id: str) -> list[str]:
        return run_sync(self.redis, self._destinations(conn_id))

    def resume(self, conn_id: str) -> list[str]:
        """Lift the hold of the connection's destinations, record the resume and wake the
        dispatchers (only when the connection has just become able to send: ``unblocks``)."""
        return run_sync(self.redis, self._resume(conn_id))

    def install(
        self,
        meta: Connection,
        *,
        access_token: str | SecretStr | None,
        refresh_token: str | SecretStr | None,
        expires_at: float | None,
        scope: str | None = None,
        source: str,
        metadata: MetaOf | None = None,
    ) -> ConnectionRecord:
        """Store new tokens (encrypted) and make the connection active; when it could not
        send before, resume its destinations.

        ``metadata``, when given, computes what is written instead of ``meta`` from the
        stored record, inside the compare-and-set: metadata written meanwhile (a ``config
        load`` changing ``rate_limit``, say) is then kept, not overwritten."""
        write = _TokenWrite(
            meta, metadata, self.cipher, access_token, refresh_token, expires_at, scope, source
        )
        return run_sync(self.redis, self._install(write))

    def publish(self, conn: Connection) -> bool:
        """A configuration file's connection: metadata always; tokens when it gives any.
        True when it became able to send: the caller resumes its destinations once they are
        published too (``registry.publish_sync``)."""
        return run_sync(self.redis, self._publish(conn))

    def reencrypt(self) -> int:
        """Rewrite every record with the first key (after a key rotation); returns how many."""
        return run_sync(self.redis, self._reencrypt())


# Asynchronous adapter (workers, HTTP API) -------------------------------------------------


class ConnectionStore(_Operations):
    """The asyncio twin of ``ConnectionStoreSync`` (the same operations)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, cipher: TokenCipher) -> None:
        self.redis = client
        self.keys = keys
        self.cipher = cipher

    async def get(self, conn_id: str) -> ConnectionRecord | None:
        return await run_async(self.redis, self._get(conn_id))

    async def all(self) -> list[ConnectionRecord]:
        return await run_async(self.redis, self._all())

    async def broken(self) -> list[Broken]:
        return await run_async(self.redis, self._broken())

    async def exists(self, conn_id: str) -> bool:
        return await run_async(self.redis, self._exists(conn_id))

    async def update(self, conn_id: str, change: Change) -> ConnectionRecord | None:
        return await run_async(self.redis, self._update(conn_id, change))

    async def delete(self, conn_id: str) -> bool:
        return await run_async(self.redis, self._delete(conn_id))

    async def destinations(self, conn_id: str) -> list[str]:
        return await run_async(self.redis, self._destinations(conn_id))

    async def resume(self, conn_id: str) -> list[str]:
        return await run_async(self.redis, self._resume(conn_id))

    async def install(
        self,
        meta: Connection,
        *,
        access_token: str | None,
        refresh_token: str | None,
        expires_at: float | None,
        scope: str | None = None,
        source: str,
        metadata: MetaOf | None = None,
    ) -> ConnectionRecord:
        write = _TokenWrite(
            meta, metadata, self.cipher, access_token, refresh_token, expires_at, scope, source
        )
        return await run_async(self.redis, self._install(write))


def connection_states_sync(client: redis.Redis, keys: Keys) -> list[ConnectionState]:
    """Every readable connection's state (no decryption, no key needed): for alerts and
    status. A record that cannot be read is skipped."""
    raw = cast("dict[bytes, bytes]", client.hgetall(keys.connections()))
    states = []
    for key, doc in raw.items():
        try:
            states.append(_state(_record_without_tokens(doc)))
        except (ValueError, TypeError, AttributeError) as exc:
            broken("connection", key.decode(errors="replace"), exc)
    return states


def stored_metadata(raw: bytes) -> Connection:
    """A stored connection's metadata, without its tokens (nothing decrypted, no key needed)."""
    return _record_without_tokens(raw).metadata()


def _record_without_tokens(raw: bytes) -> ConnectionRecord:
    doc = json.loads(raw)
    for name in ("access_token", "refresh_token", "access_token_enc", "refresh_token_enc"):
        doc.pop(name, None)
    return ConnectionRecord.model_validate(doc)
