"""JSON:API error objects and responses, shaped like Outreach's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

JSONAPI = "application/vnd.api+json"


class ApiError(Exception):
    """An error answer of the prospects API."""

    def __init__(
        self,
        status: int,
        error_id: str,
        title: str,
        detail: str,
        pointer: str | None = None,
        *,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error_id = error_id
        self.title = title
        self.detail = detail
        self.pointer = pointer
        #: Outreach's sequence-state refusals carry a `code` clients match on.
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON:API error document."""
        error: dict[str, Any] = {"id": self.error_id, "title": self.title, "detail": self.detail}
        if self.code is not None:
            error["code"] = self.code
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        return {"errors": [error]}

    def response(self) -> web.Response:
        """The error as an HTTP response."""
        return jsonapi_response(self.status, self.body())


def jsonapi_response(status: int, body: dict[str, Any]) -> web.Response:
    """A response with a JSON:API content type."""
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=JSONAPI)


def try_again_at(epoch_s: int) -> str:
    """Outreach's "please try again at" time: UTC, ISO 8601, no zone suffix."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def bad_request(detail: str, pointer: str | None = None) -> ApiError:
    """400, e.g. an unknown or unusable attribute."""
    return ApiError(400, "badRequest", "Bad request", detail, pointer)


def validation_error(detail: str, pointer: str) -> ApiError:
    """422: a value was rejected."""
    return ApiError(422, "validationError", "Validation Error", detail, pointer)


def unauthorized() -> ApiError:
    """401: missing, unknown, expired or revoked access token."""
    detail = "The access token is invalid, expired or revoked."
    return ApiError(401, "unauthorized", "Unauthorized", detail)


def not_found(raw_id: str, kind: str = "prospect") -> ApiError:
    """404: the resource (a prospect unless `kind` says otherwise) does not exist."""
    detail = f"Could not find '{kind}' with ID '{raw_id}'."
    return ApiError(404, "resourceNotFound", "Resource Not Found", detail)


def missing_scope(needed: str) -> ApiError:
    """403: the access token was not granted a scope this route needs."""
    detail = f"The access token lacks the OAuth scope this request needs: {needed}."
    return ApiError(403, "unauthorizedOauthScope", "Unauthorized OAuth Scope", detail)


def unsupported_media_type(got: str) -> ApiError:
    """415: the Content-Type is not JSON:API."""
    detail = f"Content-Type must be '{JSONAPI}', got '{got}'."
    return ApiError(415, "unsupportedMediaType", "Unsupported Media Type", detail)
