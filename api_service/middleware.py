"""ASGI middleware: request ids, the access log with metrics, the header limits and the body-size cap.

They are plain ASGI (not ``BaseHTTPMiddleware``) so streamed artifact downloads stay streamed and the body cap
applies while the body arrives, before anything buffers it.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_service.errors import PayloadTooLarge, problem
from api_service.http_protocol import CODE as HEADERS_CODE
from api_service.http_protocol import TITLE as HEADERS_TITLE
from api_service.http_protocol import header_limit_detail
from api_service.metrics import UNMATCHED_ROUTE, ApiMetrics

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = structlog.get_logger("strongroom.api.access")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is short and plain ASCII (it ends up in logs); otherwise a fresh one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED_ROUTE)) if route is not None else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Binds ``request_id`` for every log line of the request, echoes it, and writes one access line + metrics."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe(route, scope["method"], status, elapsed)
            log.info(
                "request",
                method=scope["method"],
                route=route,
                path=scope.get("path", ""),
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                client=(scope.get("client") or ("", 0))[0],
            )
            structlog.contextvars.clear_contextvars()


class HeaderLimitMiddleware:
    """431 ``request_header_fields_too_large`` past ``max_count`` header fields or ``max_bytes`` of request line
    and headers, whatever server runs the app. Under ``strongroom api`` the protocol
    (``api_service.http_protocol``) refuses such heads before they are buffered; this is the same rule for the
    rest (``uvicorn --factory`` with h11, tests)."""

    def __init__(self, app: ASGIApp, max_count: int, max_bytes: int) -> None:
        self.app = app
        self.max_count = max_count
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 16
            size += sum(len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > self.max_count or size > self.max_bytes:
                detail = header_limit_detail(self.max_count, self.max_bytes)
                await problem(431, HEADERS_CODE, HEADERS_TITLE, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes (``input_too_large``): from Content-Length, or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            error = PayloadTooLarge(self._detail())
            response = problem(error.status, error.code, error.title, error.detail)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


def _content_length(scope: Scope) -> int | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
