"""OAuth 2 endpoints: an auto-approving authorize page and the token endpoint."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import BasicAuth, web
from yarl import URL

from app.sandbox.context import SANDBOX_KEY, Sandbox
from app.sandbox.tokens import IssuedTokens

DEFAULT_USER = "sandbox-user"
DEFAULT_SCOPE = "prospects.all"
_NO_STORE = {"Cache-Control": "no-store"}

_Form = Mapping[str, object]


async def authorize(request: web.Request) -> web.StreamResponse:
    """`GET /oauth/authorize`: redirect straight back with a code (or `access_denied`)."""
    sandbox, query = request.app[SANDBOX_KEY], request.query
    if query.get("client_id") != sandbox.config.client_id:
        return _page(400, "Unknown client_id.")
    redirect_uri = query.get("redirect_uri", "")
    target = URL(redirect_uri)
    if not target.is_absolute():
        return _page(400, "redirect_uri must be an absolute URL.")
    params = _outcome(sandbox, query, redirect_uri)
    if "state" in query:
        params["state"] = query["state"]
    raise web.HTTPFound(target.update_query(params))


def _outcome(sandbox: Sandbox, query: Mapping[str, str], redirect_uri: str) -> dict[str, str]:
    if query.get("deny") == "1" or sandbox.config.deny_authorize:
        return {"error": "access_denied"}
    if query.get("response_type") != "code":
        return {"error": "unsupported_response_type"}
    user = query.get("user", DEFAULT_USER)
    scope = query.get("scope", DEFAULT_SCOPE)
    code = sandbox.tokens.issue_code(sandbox.config.client_id, redirect_uri, user, scope)
    return {"code": code}


async def token(request: web.Request) -> web.StreamResponse:
    """`POST /oauth/token`: authorization_code and refresh_token grants, with rotation."""
    sandbox = request.app[SANDBOX_KEY]
    form = await request.post()
    grant_type = _field(form, "grant_type")
    sandbox.state.token_calls[grant_type or "missing"] += 1
    if sandbox.take_token_429():
        return web.Response(status=429, text="Retry later")
    if not _client_ok(sandbox, request, form):
        return _oauth_error(401, "invalid_client")
    if grant_type == "authorization_code":
        code, redirect_uri = _field(form, "code"), _field(form, "redirect_uri")
        if not code or not redirect_uri:
            return _oauth_error(400, "invalid_request")
        issued = sandbox.tokens.redeem_code(code, sandbox.config.client_id, redirect_uri)
    elif grant_type == "refresh_token":
        refresh_token = _field(form, "refresh_token")
        if not refresh_token:
            return _oauth_error(400, "invalid_request")
        issued = sandbox.tokens.refresh(refresh_token)
    else:
        return _oauth_error(400, "unsupported_grant_type")
    return _issued(issued)


def _issued(issued: IssuedTokens | None) -> web.Response:
    if issued is None:
        return _oauth_error(400, "invalid_grant")
    return web.json_response(issued.to_json(), headers=_NO_STORE)


def _client_ok(sandbox: Sandbox, request: web.Request, form: _Form) -> bool:
    client_id, secret = _field(form, "client_id"), _field(form, "client_secret")
    header = request.headers.get("Authorization")
    if not client_id and header:
        try:
            basic = BasicAuth.decode(header)
        except ValueError:
            return False
        client_id, secret = basic.login, basic.password
    return (client_id, secret) == (sandbox.config.client_id, sandbox.config.client_secret)


def _field(form: _Form, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _oauth_error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=_NO_STORE)


def _page(status: int, message: str) -> web.Response:
    html = f"<html><body><h1>OAuth error</h1><p>{message}</p></body></html>"
    return web.Response(status=status, text=html, content_type="text/html")
