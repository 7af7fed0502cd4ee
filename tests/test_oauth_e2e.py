"""The OAuth dance over HTTP: our API (a real process) and the sandbox's authorize page and
token endpoint. Bad, reused and expired states, denial and token endpoint failures end on a
clear page; the admin routes show connections without tokens."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import pytest
import redis

from app.config.destinations import parse_config
from app.connections.records import ConnectionStoreSync
from app.core.keys import Keys
from app.store.registry import publish_sync
from tests.support import ADMIN, NO_REDIRECTS, Api, Sandbox, call

pytestmark = pytest.mark.integration


def test_the_whole_dance_stores_encrypted_tokens_and_resumes_the_destinations(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    keys = Keys(prefix)
    conf = {
        "connections": [{"id": "c", "user": "sandbox-user"}],
        "destinations": [{"id": "d", "name": "d", "connection": "c", "audiences": {"a": 1}}],
    }
    publish_sync(rclient, keys, parse_config(conf), cipher=api.cipher)
    rclient.set(keys.hold("d"), 99999999999999)

    started = call(f"{api.url}/oauth/start?connection=c", admin=True)
    assert started.status == 302
    target = urllib.parse.urlsplit(started.location)
    params = dict(urllib.parse.parse_qsl(target.query))
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{sandbox.url}/oauth/authorize"
    assert params["client_id"] == "sandbox-client" and params["response_type"] == "code"
    assert params["redirect_uri"] == f"{api.url}/oauth/callback"
    assert params["scope"] == "prospects.all" and len(params["state"]) >= 40

    back = call(call(started.location).location)
    assert back.status == 200 and "Connection c (Outreach user sandbox-user) is authorized" in (
        back.body
    )
    assert sandbox.stats()["token_calls"]["authorization_code"] == 1
    rec = ConnectionStoreSync(rclient, keys, api.cipher).get("c")
    assert rec is not None and rec.state == "active" and rec.source == "oauth"
    assert rec.expires_at is not None and rec.refresh_token_enc is not None
    token = rec.connection(api.cipher).access_token
    assert token is not None
    assert token.get_secret_value() not in str(rclient.hgetall(keys.connections()))
    assert rclient.get(keys.hold("d")) is None  # woken

    shown = call(f"{api.url}/v1/admin/connections/c", admin=True)
    listed = call(f"{api.url}/v1/admin/connections", admin=True)
    assert shown.status == 200 and shown.json()["data"]["destinations"] == ["d"]
    assert [c["id"] for c in listed.json()["data"]] == ["c"]
    for answer in (shown, listed, back):
        assert token.get_secret_value() not in answer.body and "sandbox-secret" not in answer.body
        assert "refresh_token_enc" not in answer.body and "access_token_enc" not in answer.body


def test_bad_reused_and_missing_states_end_on_a_clear_page(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    bad = call(f"{api.url}/oauth/callback?code=x&state=forged")
    assert bad.status == 400 and "unknown, has expired or was already used" in bad.body
    assert "Traceback" not in bad.body
    assert call(f"{api.url}/oauth/callback").status == 400

    started = call(f"{api.url}/oauth/start?connection=c", admin=True)
    back = call(started.location).location
    assert call(back).status == 200
    reused = call(back)
    assert reused.status == 400 and "already used" in reused.body
    assert sandbox.stats()["token_calls"]["authorization_code"] == 1  # never sent twice
    assert not list(rclient.scan_iter(match=f"{prefix}:oauthstate:*"))


def test_start_is_admin_only_and_validates_the_connection_id(
    rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    refused = call(f"{api.url}/oauth/start?connection=c")
    assert refused.status == 401 and "WWW-Authenticate" in refused.headers
    invalid = call(f"{api.url}/oauth/start?connection=Not%20An%20Id", admin=True)
    assert invalid.status == 400 and "connection:" in invalid.body
    assert call(f"{api.url}/v1/admin/connections").status == 401

    made = call(f"{api.url}/v1/admin/connections/c/authorize", method="POST", admin=True, body={})
    assert made.status == 201 and made.json()["authorize_url"].startswith(sandbox.url)
    assert call(made.json()["authorize_url"]).location.startswith(f"{api.url}/oauth/callback")


def test_start_refuses_a_navigation_from_another_site(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    """Another site cannot start an authorization with the operator's browser (which would
    send its stored Basic-auth credentials by itself); a link opened directly still works."""
    api = api_factory(sandbox)
    url = f"{api.url}/oauth/start?connection=c"
    for site in ("cross-site", "same-site"):
        forged = call(url, admin=True, extra={"Sec-Fetch-Site": site})
        assert forged.status == 403 and "followed from another site" in forged.body, site
    assert not list(rclient.scan_iter(match=f"{prefix}:oauthstate:*"))  # no state issued
    for site in ("none", "same-origin"):
        started = call(url, admin=True, extra={"Sec-Fetch-Site": site})
        assert started.status == 302 and started.location.startswith(sandbox.url), site


def test_denial_leaves_the_connection_untouched(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    sandbox.post("/_sandbox/config", {"deny_authorize": True})
    denied = api.dance("c")
    assert denied.status == 403 and "did not authorize connection c (access_denied)" in denied.body
    assert ConnectionStoreSync(rclient, Keys(prefix), api.cipher).get("c") is None
    assert sandbox.stats()["token_calls"]["authorization_code"] == 0


def test_token_endpoint_failures_end_on_a_502_page_without_secrets(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox, TOKEN_REFRESH_WAIT_S="1")
    # The code was tampered with: Outreach says invalid_grant.
    started = call(f"{api.url}/oauth/start?connection=c", admin=True)
    back = call(started.location).location.replace("code=", "code=tampered")
    failed = call(back)
    assert failed.status == 502 and "(invalid_grant)" in failed.body
    # The token endpoint keeps answering 429 longer than we may wait.
    sandbox.post("/_sandbox/config", {"token_429_next": 100})
    busy = api.dance("c")
    assert busy.status == 502 and "(http_429)" in busy.body
    for page in (failed, busy):
        assert "sandbox-secret" not in page.body and "Traceback" not in page.body
    assert ConnectionStoreSync(rclient, Keys(prefix), api.cipher).get("c") is None


def test_deleting_a_connection_in_use_needs_force(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    assert api.dance("c", user="sandbox-user").status == 200
    conf = {
        "connections": [{"id": "c", "user": "sandbox-user"}],
        "destinations": [{"id": "d", "name": "d", "connection": "c"}],
    }
    publish_sync(rclient, Keys(prefix), parse_config(conf), cipher=api.cipher)
    refused = call(f"{api.url}/v1/admin/connections/c", method="DELETE", admin=True)
    assert refused.status == 409 and refused.json()["errors"][0]["title"] == "Connection in use"
    gone = call(f"{api.url}/v1/admin/connections/c?force=true", method="DELETE", admin=True)
    assert gone.status == 204
    assert call(f"{api.url}/v1/admin/connections/c", admin=True).status == 404


def test_the_callback_checks_the_connection_before_the_exchange_and_never_ends_in_a_500(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    keys = Keys(prefix)
    # A state naming an id no connection may have (made before ids were checked at start).
    doc = {"connection": "Not An Id", "user": None, "created_at": 0}
    rclient.set(keys.oauth_state("s" * 43), json.dumps(doc), ex=60)
    bad = call(f"{api.url}/oauth/callback?code=abc&state={'s' * 43}")
    assert bad.status == 400 and "connection:" in bad.body and "Nothing was changed" in bad.body
    assert sandbox.stats()["token_calls"]["authorization_code"] == 0  # the code not spent

    # Storing fails after the exchange (here: a stored record that no longer validates).
    rclient.hset(keys.connections(), "c", json.dumps({"id": "c", "user": "u", "rate_limit": "?"}))
    failed = api.dance("c")
    assert failed.status == 503 and "could not be stored" in failed.body, failed.body
    assert "Traceback" not in failed.body and "sandbox-secret" not in failed.body
    assert sandbox.stats()["token_calls"]["authorization_code"] == 1


def test_authorize_with_a_body_needs_a_json_content_type(
    sandbox: Sandbox, api_factory: Callable[..., Api]
) -> None:
    api = api_factory(sandbox)
    req = urllib.request.Request(
        f"{api.url}/v1/admin/connections/c/authorize",
        data=b'{"user": "ada@example.com"}',
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/plain"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        NO_REDIRECTS.open(req, timeout=30)
    assert refused.value.code == 415
    assert json.loads(refused.value.read())["errors"][0]["title"] == "Unsupported media type"
    made = call(f"{api.url}/v1/admin/connections/c/authorize", method="POST", admin=True, body={})
    assert made.status == 201
