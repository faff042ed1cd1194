"""The one place that turns exceptions into RFC 9457 ``application/problem+json`` responses.

Every problem carries ``type``, ``title``, ``status``, ``detail`` and a stable ``code`` clients switch on. Only
``StrongroomError.detail`` (written to be shown) reaches a client; anything unexpected becomes a bare 500 whose
detail is the request id, so nothing internal (tracebacks, keys, signatures) can leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from shared.errors import AuthError, RateLimited, StrongroomError

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://strongroom.dev/problems/"

log = structlog.get_logger("strongroom.api.errors")

_HTTP_CODES: Mapping[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("input_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


class PayloadTooLarge(StrongroomError):
    """The request body is larger than the configured input cap (checked while streaming, before buffering).

    422 with a code naming the field, as the issue asks for an oversized ``input``; the body is nearly all input.
    """

    status = 422
    code = "input_too_large"
    title = "Request body too large"


class RangeNotSatisfiable(StrongroomError):
    """A ``Range`` header that selects no byte of the object (RFC 9110 section 15.5.17)."""

    status = 416
    code = "range_not_satisfiable"
    title = "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__("the requested range lies outside the object")
        self.size = size


def problem(
    status: int, code: str, title: str, detail: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"type": PROBLEM_TYPE_BASE + code, "title": title, "status": status, "detail": detail, "code": code}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


async def strongroom_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StrongroomError)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if isinstance(exc, AuthError):
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.auth_failures.labels(code=exc.code).inc()
    status = exc.status if 400 <= exc.status <= 599 else 500
    if status >= 500:
        log.warning("request failed", code=exc.code, status=status, error_type=type(exc).__name__)
    return problem(status, exc.code, exc.title, exc.detail, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if exc.status_code in _HTTP_CODES and isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return problem(exc.status_code, code, title, detail, headers=headers)


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """RFC 9110 section 15.5.6: ``Allow`` lists every method the target supports. The route table has one route
    per (path, method), and Starlette's 405 names only the first route whose path matched, so the methods of
    every route on the path are gathered here."""
    methods: set[str] = set()
    probe = {**request.scope, "method": ""}  # matches no route's methods: any path match is PARTIAL
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(probe)[0] is not Match.NONE:
            methods |= route.methods
    known = [m for m in _METHOD_ORDER if m in methods]
    return ", ".join(known + sorted(methods - set(known)))


async def validation_error(request: Request, exc: Exception) -> Response:
    """A pydantic error that no endpoint mapped to a field code: name the fields, never echo the values."""
    assert isinstance(exc, ValidationError)
    return problem(422, "body_invalid", "Invalid request", describe_validation(exc))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", error_type=type(exc).__name__, exc_info=exc)
    request_id = _request_id(request)
    detail = f"internal error (request id {request_id})" if request_id else "internal error"
    return problem(500, "internal_error", "Internal error", detail)


def describe_validation(exc: ValidationError) -> str:
    """Field paths and messages only: pydantic's ``input`` (which may hold secrets) is left out on purpose."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request body"


def exception_handlers() -> dict[Any, Any]:
    return {
        StrongroomError: strongroom_error,
        HTTPException: http_error,
        ValidationError: validation_error,
        Exception: unexpected_error,
    }
