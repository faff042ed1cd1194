"""uvicorn's httptools protocol with bounded request heads: at most ``max_count`` header fields and
``max_bytes`` of request line plus headers, else ``431 request_header_fields_too_large`` (problem+json) and the
connection is closed, before the app or the access log sees anything.

uvicorn bounds the head only for its h11 protocol (``h11_max_incomplete_event_size``); with httptools a client
could send 100,000 headers or one of 100 MB (httptools joins a header's pieces in memory until it ends). Here the
bytes fed to the parser while a head is incomplete are counted after each chunk, so memory stays within
``max_bytes`` plus one read (a chunk in which a head began also counts the bytes before it, so a client that
pipelines a new request right behind a large body can be refused early: no client we serve pipelines). The
count is checked per header as it is parsed. ``api_service.middleware.HeaderLimitMiddleware`` applies the same
figures to whatever server runs the app (h11, TestClient).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api_service.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE
from shared.settings import Settings

CODE = "request_header_fields_too_large"
TITLE = "Request header fields too large"


def header_limit_detail(max_count: int, max_bytes: int) -> str:
    return f"a request may carry at most {max_count} header fields and {max_bytes} bytes of request line and headers"


def problem_431_bytes(detail: str) -> bytes:
    """A complete HTTP/1.1 431 response, written by the protocol itself (no app is involved yet)."""
    body = json.dumps(
        {"type": PROBLEM_TYPE_BASE + CODE, "title": TITLE, "status": 431, "detail": detail, "code": CODE}
    ).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    """Limits are class attributes (see ``header_limited_protocol``): uvicorn builds one per connection."""

    max_count = 100
    max_bytes = 32768

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._header_count = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes, self._header_count = True, 0, 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_count:
            self._refused = True  # raising stops the parser; uvicorn then calls send_400_response, answered below
            raise ValueError("too many header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            self._write_431()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        self._write_431()

    def _write_431(self) -> None:
        self.logger.warning("request head refused: over the header limits")
        self.transport.write(problem_431_bytes(header_limit_detail(self.max_count, self.max_bytes)))
        self.transport.close()


def header_limited_protocol(settings: Settings) -> type[HeaderLimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` option, with this deployment's limits."""
    return type(
        "HeaderLimitedHttpTools",
        (HeaderLimitedHttpToolsProtocol,),
        {"max_count": settings.max_header_count, "max_bytes": settings.max_header_bytes},
    )
