"""The unauthenticated control API under `/_sandbox/`, for tests and the demo."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.sandbox.config import SandboxConfig
from app.sandbox.context import SANDBOX_KEY, Sandbox
from app.sandbox.quota import QuotaStatus
from app.sandbox.scopes import ALL_SCOPES

_Body = TypeVar("_Body", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Spend(_Strict):
    n: int = Field(ge=0)


class _Pause(_Strict):
    reset_in_s: float = Field(ge=0)


class _Token(_Strict):
    access_token: str = Field(min_length=1)
    user: str = Field(min_length=1)
    expires_in: int | None = None
    refresh_token: str | None = None
    scope: str = ALL_SCOPES


class _Revoke(_Strict):
    refresh_token: str | None = None
    user: str | None = None


async def prospects(request: web.Request) -> web.Response:
    """`GET /_sandbox/prospects`: `{id: attributes}` of every written prospect."""
    sandbox = request.app[SANDBOX_KEY]
    sandbox.advance()
    stored = sandbox.state.prospects
    return web.json_response({str(pid): attrs for pid, attrs in stored.items()})


async def prospect(request: web.Request) -> web.Response:
    """`GET /_sandbox/prospects/{id}`: the attributes of one written prospect."""
    sandbox = request.app[SANDBOX_KEY]
    sandbox.advance()
    stored = sandbox.state.prospects
    raw_id = request.match_info["id"]
    found = stored.get(int(raw_id)) if raw_id.isascii() and raw_id.isdigit() else None
    if found is None:
        return web.json_response({"error": "prospect never written"}, status=404)
    return web.json_response(found)


async def stats(request: web.Request) -> web.Response:
    """`GET /_sandbox/stats`: counters and per-user quota."""
    sandbox = request.app[SANDBOX_KEY]
    sandbox.advance()
    state = sandbox.state
    token_calls = {"authorization_code": 0, "refresh_token": 0, **state.token_calls}
    body = {
        "requests": state.requests,
        "by_status": {str(code): n for code, n in sorted(state.by_status.items())},
        "patches_ok": state.patches_ok,
        "patch_count_by_prospect": {str(p): n for p, n in state.patch_count_by_prospect.items()},
        "rate_limited": state.rate_limited,
        "token_calls": token_calls,
        "by_user": {user: _user_stats(sandbox, user) for user in _users(sandbox)},
        "bulk": _bulk_stats(sandbox),
    }
    return web.json_response(body)


async def batches(request: web.Request) -> web.Response:
    """`GET /_sandbox/batches`: every bulk batch, its ids and its items' outcomes."""
    sandbox = request.app[SANDBOX_KEY]
    sandbox.advance()
    body = [
        {
            **batch.to_json(),
            "ids": [item.prospect_id for item in batch.items],
            "modification": batch.attributes,
        }
        for batch in sandbox.batches.batches.values()
    ]
    return web.json_response(body)


def _bulk_stats(sandbox: Sandbox) -> dict[str, Any]:
    all_batches = sandbox.batches.batches.values()
    states = Counter(batch.state for batch in all_batches)
    return {
        "batches": len(sandbox.batches.batches),
        "records": sum(len(batch.items) for batch in all_batches),
        "records_modified": sandbox.bulk_records,
        "records_failed": sum(batch.failures for batch in all_batches),
        "by_state": dict(states),
    }


async def requests(request: web.Request) -> web.Response:
    """`GET /_sandbox/requests?since=<epoch>`: the request log after `since`."""
    sandbox = request.app[SANDBOX_KEY]
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return _error("since must be a number")
    entries = [entry.to_json() for entry in sandbox.state.requests_since(since)]
    return web.json_response({"now": sandbox.clock(), "requests": entries})


async def reset(request: web.Request) -> web.Response:
    """`POST /_sandbox/reset`: clear state; a non-empty body is a whole new config."""
    body = await _json_object(request)
    try:
        config = SandboxConfig.model_validate(body) if body else None
    except ValidationError as exc:
        return _error(describe(exc))
    new = request.app[SANDBOX_KEY].reset(config)
    return web.json_response({"ok": True, "config": new.to_json()})


async def get_config(request: web.Request) -> web.Response:
    """`GET /_sandbox/config`: the current config."""
    return web.json_response(request.app[SANDBOX_KEY].config.to_json())


async def update_config(request: web.Request) -> web.Response:
    """`POST /_sandbox/config`: partial update; answers the new config."""
    body = await _json_object(request)
    try:
        new = request.app[SANDBOX_KEY].update_config(body)
    except ValidationError as exc:
        return _error(describe(exc))
    return web.json_response(new.to_json())


async def quota(request: web.Request) -> web.Response:
    """`GET /_sandbox/quota/{user}`: one user's quota."""
    user = request.match_info["user"]
    return _status_response(user, request.app[SANDBOX_KEY].quota.status(user))


async def spend(request: web.Request) -> web.Response:
    """`POST /_sandbox/quota/{user}/spend` `{"n": int}`: another integration spends quota."""
    body = await parse_body(request, _Spend)
    user = request.match_info["user"]
    return _status_response(user, request.app[SANDBOX_KEY].quota.spend(user, body.n))


async def pause(request: web.Request) -> web.Response:
    """`POST /_sandbox/quota/{user}/pause` `{"reset_in_s": float}`: 429 until then."""
    body = await parse_body(request, _Pause)
    sandbox, user = request.app[SANDBOX_KEY], request.match_info["user"]
    status = sandbox.quota.force_429(user, sandbox.clock() + body.reset_in_s)
    return _status_response(user, status)


async def register_token(request: web.Request) -> web.Response:
    """`POST /_sandbox/tokens`: install an access (and optional refresh) token."""
    body = await parse_body(request, _Token)
    tokens = request.app[SANDBOX_KEY].tokens
    expires_at = tokens.register(
        body.access_token, body.user, body.expires_in, body.refresh_token, body.scope
    )
    answer = body.model_dump(exclude={"expires_in", "scope"})
    return web.json_response({**answer, "expires_at": expires_at})


async def revoke_tokens(request: web.Request) -> web.Response:
    """`POST /_sandbox/tokens/revoke` `{"refresh_token"}` or `{"user"}`."""
    body = await parse_body(request, _Revoke)
    tokens = request.app[SANDBOX_KEY].tokens
    revoked = 0
    if body.refresh_token is not None:
        revoked += tokens.revoke_refresh(body.refresh_token)
    if body.user is not None:
        revoked += tokens.revoke_user(body.user)
    return web.json_response({"revoked": revoked})


def _users(sandbox: Sandbox) -> list[str]:
    return sorted(set(sandbox.state.by_user) | sandbox.quota.users())


def _user_stats(sandbox: Sandbox, user: str) -> dict[str, int]:
    status = sandbox.quota.status(user)
    requests_made = sandbox.state.by_user[user]
    return {
        "requests": requests_made,
        "charged": sandbox.quota.charged.get(user, 0),
        "remaining": status.remaining,
        "reset": status.reset_epoch_s,
    }


def _status_response(user: str, status: QuotaStatus) -> web.Response:
    return web.json_response(
        {
            "user": user,
            "limit": status.limit,
            "remaining": status.remaining,
            "reset": status.reset_epoch_s,
        }
    )


async def parse_body(request: web.Request, model: type[_Body]) -> _Body:
    """The JSON body validated by `model`; a 400 naming the bad fields otherwise."""
    try:
        return model.model_validate(await _json_object(request))
    except ValidationError as exc:
        raise _bad(describe(exc)) from exc


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise _bad("body is not JSON") from exc
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    return body


def describe(exc: ValidationError) -> str:
    """Every problem pydantic found, `field.path: message`, on one line."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
