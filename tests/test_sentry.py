"""Sentry events leave without tokens, API keys or prospects' attributes: captured by a local
transport from a request handler of the real API app and from a real Celery task run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from celery import Celery

from app.api.app import make_app
from app.ops.sentry import init_sentry, scrub_event
from tests.support import CapturingTransport, make_settings, settings_env

TOKEN = "ya29TOKENf00dcafe1234567890"
REFRESH = "rfrTOKENbeefbeef0987654321"
API_KEY = "osk_fake1_9f8e7d6c5b4a3f2e1d0c"
CLIENT_SECRET = "cs-SECRET-5566778899"
EMAIL = "ada.lovelace@analytical-engines.example"
CUSTOM_VALUE = "PlatinumTierAudienceValue"
FIRST_NAME = "Adelaide"
COOKIE = "sessionCOOKIEabcdef123"
ADMIN_KEY = "adminKEY-0123456789abcdef"  # a setting's secret: redacted by value, any shape
SECRETS = [TOKEN, REFRESH, API_KEY, CLIENT_SECRET, EMAIL, CUSTOM_VALUE, FIRST_NAME, COOKIE]
SECRETS.append(ADMIN_KEY)


class DeliveryExploded(RuntimeError):
    """The error the tests raise; its name must reach Sentry."""


@pytest.fixture
def transport(prefix: str) -> Iterator[CapturingTransport]:
    env = settings_env(
        prefix, None, SENTRY_DSN="https://public@sentry.invalid/1", ADMIN_API_KEY=ADMIN_KEY
    )
    capture = CapturingTransport()
    assert init_sentry(make_settings(env), component="test", transport=capture)
    yield capture
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def _profile() -> dict[str, Any]:
    return {
        "identityMap": {"OutreachId": [{"id": "1001"}], "Email": [{"id": EMAIL}]},
        "attributes": {"firstName": {"value": FIRST_NAME}, "email": EMAIL},
        "fields": {"custom7": CUSTOM_VALUE, "emails": [EMAIL]},
    }


def _assert_clean(transport: CapturingTransport) -> str:
    sentry_sdk.flush(timeout=5)
    text = transport.text()
    assert "DeliveryExploded" in text, "the event itself must still be sent"
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"leaked to Sentry: {leaked}"
    return text


async def test_api_handler_error_reaches_sentry_without_secrets(
    transport: CapturingTransport, prefix: str
) -> None:
    app = make_app(make_settings(settings_env(prefix, None)))

    async def explode(request: web.Request) -> web.Response:
        profile = await request.json()
        fields = profile["fields"]
        access_token, api_key = TOKEN, API_KEY
        raise DeliveryExploded(
            f"PATCH failed for {profile} fields={fields} Authorization: Bearer {access_token} "
            f"key {api_key} refresh_token={REFRESH} client_secret: {CLIENT_SECRET}"
        )

    app.router.add_post("/v1/_explode", explode)
    async with TestClient(TestServer(app)) as client:
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "X-API-Key": API_KEY,
            "Cookie": f"session={COOKIE}",
        }
        resp = await client.post(f"/v1/_explode?email={EMAIL}", json=_profile(), headers=headers)
        assert resp.status == 500
    text = _assert_clean(transport)
    assert "/v1/_explode" in text  # the request is described, only its secrets are gone


def test_worker_task_error_reaches_sentry_without_secrets(transport: CapturingTransport) -> None:
    celery = Celery("sentry-test", broker="memory://")
    celery.conf.task_always_eager = False

    @celery.task(name="outreach_sync.test_explode")
    def explode(destination_id: str, profiles: list[dict[str, Any]]) -> None:
        attributes = profiles[0]["attributes"]
        token = TOKEN
        raise DeliveryExploded(
            f"{destination_id}: {attributes}; token={token}, X-API-Key: {API_KEY}, "
            f"admin key {ADMIN_KEY}"
        )

    result = explode.apply(args=("demo", [_profile()]))
    assert isinstance(result.result, DeliveryExploded)
    _assert_clean(transport)


def test_logged_error_reaches_sentry_without_secrets(transport: CapturingTransport) -> None:
    import logging

    log = logging.getLogger("outreach_sync.test")
    log.info("refreshing with refresh_token=%s for %s", REFRESH, EMAIL)  # a breadcrumb
    try:
        raise DeliveryExploded(f"Bearer {TOKEN}")
    except DeliveryExploded:
        log.exception("drain failed; api_key=%s", API_KEY)
    text = _assert_clean(transport)
    assert "drain failed" in text


def test_scrub_event_keeps_structure_and_drops_bodies() -> None:
    event: dict[str, Any] = {
        "level": "error",
        "request": {"data": {"email": EMAIL}, "headers": {"X-Api-Key": API_KEY, "Accept": "*/*"}},
        "extra": {"celery-job": {"args": ["demo", [_profile()]], "task_name": "outreach_sync.x"}},
        "contexts": {"runtime": {"name": "CPython"}},
    }
    clean = scrub_event(event)
    assert clean["request"] == {
        "data": "[Filtered]",
        "headers": {"X-Api-Key": "[Filtered]", "Accept": "*/*"},
    }
    assert clean["extra"]["celery-job"] == {"args": "[Filtered]", "task_name": "outreach_sync.x"}
    assert clean["contexts"]["runtime"]["name"] == "CPython"


def test_frame_variables_never_leave_whatever_their_name(transport: CapturingTransport) -> None:
    """A claimed batch under an innocent name still carries a prospect's attributes."""
    # (Built from the module's constants: Sentry quotes source lines around each frame.)
    attributes = {"company": FIRST_NAME + " Corp", "addressStreet": CUSTOM_VALUE}

    def send_batch(claimed: list[dict[str, Any]]) -> None:
        go = list(claimed)
        raise DeliveryExploded(f"redis went away after {len(go)} sends")

    try:
        send_batch([{"prospect": 7, "parts": list(attributes.values())}])
    except DeliveryExploded as exc:
        sentry_sdk.capture_exception(exc)
    text = _assert_clean(transport)
    assert "send_batch" in text  # the frame is there, its variables are not
    assert attributes["company"] not in text
