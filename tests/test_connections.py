"""Connections at rest: tokens encrypted (scanned in raw Redis), key rotation, the config file
and CLI writing through the store, and the service refusing to start unsafely."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from pydantic import SecretStr

from app.config.destinations import Connection, parse_config
from app.connections.crypto import (
    DEVELOPMENT_ONLY_INSECURE_KEY,
    TokenCipher,
    TokenDecryptError,
    cipher_for,
    parse_keys,
)
from app.connections.records import (
    REAUTH_REQUIRED,
    ConnectionStoreSync,
    connection_states_sync,
    with_reauth_required,
)
from app.core.keys import Keys
from app.ops.startup import StartupRefused, check_startup, startup_problems
from app.store.registry import Registry, publish_sync
from tests.support import ROOT, TEST_REDIS_URL, make_settings, settings_env

ACCESS = "ACCESS-tok-8f3a1c"
CELERY = [sys.executable, "-m", "celery", "-q", "-A", "workers.celery_app", "worker", "-c", "1"]
REFRESH = "REFRESH-tok-77be02"


def cipher(*keys: str) -> TokenCipher:
    return TokenCipher(parse_keys(",".join(keys)))


def raw_dump(client: redis.Redis, prefix: str) -> str:
    """Everything stored under the prefix, as text: hashes, strings, lists, sets."""
    out = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key).decode()
        value: Any = {
            "hash": client.hgetall,
            "string": client.get,
            "list": lambda k: client.lrange(k, 0, -1),
            "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1),
        }[kind](key)
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def config(**conn: Any) -> Any:
    return parse_config(
        {
            "connections": [{"id": "c", "user": "u1", **conn}],
            "destinations": [{"id": "d", "name": "d", "connection": "c", "audiences": {"a": 1}}],
        }
    )


def test_tokens_are_encrypted_at_rest_read_back_by_the_store_never_by_the_registry(
    prefix: str, rclient: redis.Redis
) -> None:
    key = Fernet.generate_key().decode()
    keys, c = Keys(prefix), cipher(key)
    publish_sync(rclient, keys, config(access_token=ACCESS, refresh_token=REFRESH), cipher=c)
    ConnectionStoreSync(rclient, keys, c).install(
        Connection(id="c2", user="u2"),
        access_token=ACCESS + "2",
        refresh_token=REFRESH + "2",
        expires_at=None,
        source="cli",
    )
    dump = raw_dump(rclient, prefix)
    assert "c2" in dump and "access_token_enc" in dump
    assert ACCESS not in dump and REFRESH not in dump

    async def read() -> Connection | None:
        import redis.asyncio as aioredis

        client = aioredis.from_url(TEST_REDIS_URL)
        try:
            return await Registry(client, keys).connection("c")
        finally:
            await client.aclose()

    import asyncio

    # The registry (read every couple of seconds by every worker) holds metadata only.
    conn = asyncio.run(read())
    assert conn is not None and conn.user == "u1"
    assert conn.access_token is None and conn.refresh_token is None
    stored = ConnectionStoreSync(rclient, keys, c).get("c")
    assert stored is not None
    tokens = stored.connection(c)
    assert tokens.access_token == SecretStr(ACCESS) and tokens.refresh_token == SecretStr(REFRESH)


def test_a_file_without_tokens_keeps_the_stored_ones_and_updates_the_metadata(
    prefix: str, rclient: redis.Redis
) -> None:
    keys, c = Keys(prefix), cipher(Fernet.generate_key().decode())
    store = ConnectionStoreSync(rclient, keys, c)
    store.install(
        Connection(id="c", user="u1"),
        access_token=ACCESS,
        refresh_token=REFRESH,
        expires_at=1e10,
        source="oauth",
    )
    publish_sync(rclient, keys, config(rate_limit="500/hour"), cipher=c)
    rec = store.get("c")
    assert rec is not None
    assert (rec.rate_limit, rec.source, rec.generation, rec.expires_at) == (
        "500/hour",
        "oauth",
        1,
        1e10,
    )
    assert rec.connection(c).access_token == SecretStr(ACCESS)


def test_key_rotation_old_key_still_decrypts_until_reencrypt_moves_everything(
    prefix: str, rclient: redis.Redis
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys = Keys(prefix)
    publish_sync(rclient, keys, config(access_token=ACCESS), cipher=cipher(old))
    rotated = ConnectionStoreSync(rclient, keys, cipher(new, old))
    rec = rotated.get("c")
    assert rec is not None and rec.connection(rotated.cipher).access_token == SecretStr(ACCESS)
    assert rotated.reencrypt() == 1
    again = ConnectionStoreSync(rclient, keys, cipher(new)).get("c")
    assert again is not None
    assert again.connection(cipher(new)).access_token == SecretStr(ACCESS)
    with pytest.raises(TokenDecryptError) as err:
        again.connection(cipher(old))
    assert ACCESS not in str(err.value) and "TOKEN_ENCRYPTION_KEY" in str(err.value)


def test_a_plaintext_record_from_before_encryption_is_sealed_by_reencrypt(
    prefix: str, rclient: redis.Redis
) -> None:
    keys, c = Keys(prefix), cipher(Fernet.generate_key().decode())
    legacy = {"id": "c", "user": "u1", "access_token": ACCESS, "refresh_token": None}
    rclient.hset(keys.connections(), "c", json.dumps(legacy))
    store = ConnectionStoreSync(rclient, keys, c)
    rec = store.get("c")
    assert rec is not None and rec.connection(c).access_token == SecretStr(ACCESS)
    assert store.reencrypt() == 1
    assert ACCESS not in raw_dump(rclient, prefix)


def test_connection_states_name_the_connection_needing_reauthorization(
    prefix: str, rclient: redis.Redis
) -> None:
    keys, c = Keys(prefix), cipher(Fernet.generate_key().decode())
    store = ConnectionStoreSync(rclient, keys, c)
    store.install(
        Connection(id="c", user="u1"),
        access_token=ACCESS,
        refresh_token=None,
        expires_at=None,
        source="cli",
    )
    store.update("c", lambda old: old and with_reauth_required(old, "invalid_grant", now=1.0))
    [state] = connection_states_sync(rclient, keys)
    assert (state.id, state.state, state.reason) == ("c", REAUTH_REQUIRED, "invalid_grant")
    # Reconnecting makes it active again and lifts the destinations' hold.
    publish_sync(rclient, keys, config(), cipher=c)
    rclient.set(keys.hold("d"), 99999999999999)
    rec = store.install(
        Connection(id="c", user="u1"),
        access_token=ACCESS,
        refresh_token=None,
        expires_at=None,
        source="oauth",
    )
    assert rec.state == "active" and rec.reason is None and rec.generation == 2
    assert rclient.get(keys.hold("d")) is None
    assert b"d" in rclient.lrange(keys.wake(), 0, -1)


# Startup -----------------------------------------------------------------------------------


def test_production_names_every_missing_secret() -> None:
    settings = make_settings({"APP_ENV": "production"})
    problems = startup_problems(settings)
    assert any(p.startswith("TOKEN_ENCRYPTION_KEY is required") for p in problems)
    assert any(p.startswith("ADMIN_API_KEY is required") for p in problems)
    with pytest.raises(StartupRefused):
        check_startup(settings)
    ok = make_settings(
        {
            "APP_ENV": "production",
            "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "ADMIN_API_KEY": "an-admin-secret-of-24-chars-or-more",
        }
    )
    assert startup_problems(ok) == []


def test_a_bad_key_is_named_by_position_never_echoed() -> None:
    good = Fernet.generate_key().decode()
    settings = make_settings({"TOKEN_ENCRYPTION_KEY": f"{good},not-a-key-xyz"})
    [problem] = startup_problems(settings)
    assert "key 2 of 2 is not a Fernet key" in problem and "not-a-key-xyz" not in problem
    dev = make_settings(
        {
            "APP_ENV": "production",
            "ADMIN_API_KEY": "an-admin-secret-of-24-chars-or-more",
            "TOKEN_ENCRYPTION_KEY": DEVELOPMENT_ONLY_INSECURE_KEY.decode(),
        }
    )
    assert startup_problems(dev) == [
        "TOKEN_ENCRYPTION_KEY must not be the public development key (APP_ENV=production)"
    ]


def test_development_without_a_key_warns_once_and_uses_the_development_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings({})
    with caplog.at_level(logging.WARNING, logger="app.ops.startup"):
        check_startup(settings)
    [record] = [
        r
        for r in caplog.records
        if r.name == "app.ops.startup" and "TOKEN_ENCRYPTION_KEY" in r.getMessage()
    ]
    assert "DEVELOPMENT_ONLY_INSECURE_KEY" in record.getMessage()
    assert cipher_for(settings).development


def test_api_and_worker_refuse_to_start_in_production_without_keys(prefix: str) -> None:
    env = {**os.environ, **settings_env(prefix, None), "APP_ENV": "production"}
    env.pop("TOKEN_ENCRYPTION_KEY", None)
    env.pop("ADMIN_API_KEY", None)
    api = subprocess.run(
        [sys.executable, "-m", "app", "api", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert api.returncode == 2
    assert "TOKEN_ENCRYPTION_KEY is required" in api.stderr
    assert "ADMIN_API_KEY is required" in api.stderr
    worker = subprocess.run(
        [*CELERY, "-n", f"{prefix}-refused@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode != 0
    assert "TOKEN_ENCRYPTION_KEY is required" in worker.stderr


# CLI ---------------------------------------------------------------------------------------


def cli(
    prefix: str, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **settings_env(prefix, None), **env}
    return subprocess.run(
        [sys.executable, "-m", "app", "connections", *args],
        cwd=ROOT,
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_adds_lists_shows_and_removes_without_ever_printing_a_token(
    prefix: str, rclient: redis.Redis
) -> None:
    key = Fernet.generate_key().decode()
    secrets_env = {"TOKEN_ENCRYPTION_KEY": key, "MY_ACCESS": ACCESS, "MY_REFRESH": REFRESH}
    added = cli(
        prefix,
        "add",
        "c",
        "--user",
        "u1",
        "--access-token-env",
        "MY_ACCESS",
        "--refresh-token-env",
        "MY_REFRESH",
        "--expires-in",
        "3600",
        **secrets_env,
    )
    assert added.returncode == 0, added.stderr
    piped = cli(
        prefix,
        "add",
        "c2",
        "--user",
        "u2",
        "--access-token-stdin",
        stdin=ACCESS + "\n",
        **secrets_env,
    )
    assert piped.returncode == 0, piped.stderr
    listed = cli(prefix, "list", **secrets_env)
    shown = cli(prefix, "show", "c", **secrets_env)
    doc = json.loads(shown.stdout)
    assert doc["state"] == "active" and doc["has_refresh_token"] and doc["expires_at"]
    assert "c: user=u1 state=active" in listed.stdout and "c2: user=u2" in listed.stdout
    for out in (added, piped, listed, shown):
        assert ACCESS not in out.stdout + out.stderr and REFRESH not in out.stdout + out.stderr
    assert ACCESS not in raw_dump(rclient, prefix)
    stored = ConnectionStoreSync(rclient, Keys(prefix), cipher(key)).get("c2")
    assert stored is not None and stored.connection(cipher(key)).access_token == SecretStr(ACCESS)

    publish_sync(rclient, Keys(prefix), config(), cipher=cipher(key))
    refused = cli(prefix, "remove", "c", **secrets_env)
    assert refused.returncode == 2 and "destinations d use connection 'c'" in refused.stderr
    assert cli(prefix, "remove", "c", "--force", **secrets_env).returncode == 0
    assert cli(prefix, "show", "c", **secrets_env).returncode == 2


def test_cli_add_names_what_is_wrong(prefix: str) -> None:
    missing = cli(prefix, "add", "c", "--user", "u", "--access-token-env", "NO_SUCH_VAR_X")
    assert missing.returncode == 2
    assert "--access-token-env: environment variable NO_SUCH_VAR_X is not set" in missing.stderr
    bad = cli(
        prefix,
        "add",
        "c",
        "--user",
        "u",
        "--access-token-stdin",
        "--rate-limit",
        "lots",
        stdin="tok\n",
    )
    assert bad.returncode == 2 and "rate_limit: 'lots' is not a rate limit" in bad.stderr
    when = cli(
        prefix,
        "add",
        "c",
        "--user",
        "u",
        "--access-token-stdin",
        "--expires-at",
        "tomorrow",
        stdin="tok\n",
    )
    assert when.returncode == 2 and "--expires-at 'tomorrow' is not an ISO 8601 time" in when.stderr


def test_cli_refuses_to_store_tokens_without_a_key_outside_development(
    prefix: str, rclient: redis.Redis
) -> None:
    # An empty variable counts as unset: no TOKEN_ENCRYPTION_KEY, whatever the environment has.
    env = {"APP_ENV": "production", "TOKEN_ENCRYPTION_KEY": "", "MY_ACCESS": ACCESS}
    added = cli(prefix, "add", "c", "--user", "u1", "--access-token-env", "MY_ACCESS", **env)
    assert added.returncode == 2, added.stderr
    assert "error: TOKEN_ENCRYPTION_KEY is required with APP_ENV=production" in added.stderr
    assert "Traceback" not in added.stderr
    assert not list(rclient.scan_iter(match=f"{prefix}*"))


def test_cli_authorize_validates_the_connection_and_user(prefix: str) -> None:
    env = {"OUTREACH_CLIENT_ID": "app", "OUTREACH_CLIENT_SECRET": "app-secret-1234"}
    bad_id = cli(prefix, "authorize", "no spaces allowed", **env)
    assert bad_id.returncode == 2 and bad_id.stderr.startswith("error: connection: "), bad_id.stderr
    bad_user = cli(prefix, "authorize", "c", "--user", "u" * 300, **env)
    assert bad_user.returncode == 2 and bad_user.stderr.startswith("error: user: "), bad_user.stderr


def test_cli_add_keeps_the_stored_rate_limit_and_reserve_share_when_not_given(
    prefix: str, rclient: redis.Redis
) -> None:
    key = Fernet.generate_key().decode()
    env = {"TOKEN_ENCRYPTION_KEY": key, "MY_ACCESS": ACCESS}
    args = ("add", "c", "--user", "u1", "--access-token-env", "MY_ACCESS")
    first = cli(prefix, *args, "--rate-limit", "500/hour", "--reserve-share", "0.2", **env)
    assert first.returncode == 0, first.stderr
    again = cli(prefix, *args, **env)
    assert again.returncode == 0, again.stderr
    stored = ConnectionStoreSync(rclient, Keys(prefix), cipher(key)).get("c")
    assert stored is not None and stored.generation == 2
    assert (stored.rate_limit, stored.reserve_share) == ("500/hour", 0.2)


def test_config_loads_resume_a_connection_only_when_it_becomes_able_to_send(
    prefix: str, rclient: redis.Redis
) -> None:
    keys, c = Keys(prefix), cipher(Fernet.generate_key().decode())
    publish_sync(rclient, keys, config(), cipher=c)  # no tokens yet: nothing to resume
    assert rclient.get(keys.resumed("d")) is None
    publish_sync(rclient, keys, config(access_token=ACCESS), cipher=c)
    first = rclient.get(keys.resumed("d"))
    assert first is not None
    # Periodic loads of an active connection (with or without tokens) must not restart the
    # retry age of its changes (app/delivery/lots.py reads the resume for it).
    rclient.set(keys.resumed("d"), 1)
    publish_sync(rclient, keys, config(), cipher=c)
    publish_sync(rclient, keys, config(access_token=ACCESS + "2"), cipher=c)
    assert rclient.get(keys.resumed("d")) == b"1"
    store = ConnectionStoreSync(rclient, keys, c)
    store.update("c", lambda old: old and with_reauth_required(old, "revoked", now=0))
    publish_sync(rclient, keys, config(access_token=ACCESS + "3"), cipher=c)
    assert int(rclient.get(keys.resumed("d")) or 0) > 1  # reauth_required -> active
