"""Whom the per-client refusal budget charges (review finding 4): the peer, or the nearest untrusted forwarded hop."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from api_service.auth import client_id

pytestmark = pytest.mark.unit

PROXIES = ("10.0.0.0/8", "fd00::/8")


def request(peer: str | None, forwarded: tuple[str, ...] | list[str] = ()) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 1) if peer else None}
    return Request(scope)


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.7", [], "203.0.113.7"),
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # an untrusted peer's X-Forwarded-For is ignored
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the client's own claim is further left
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # repeated headers, two proxies
        ("10.1.2.3", ["not-an-ip, 10.9.9.9"], "10.9.9.9"),  # stops at garbage, charges the last trusted hop
        ("10.1.2.3", [], "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", [], "2001:db8:1:2::/64"),  # one subscriber's /64 is one client
        ("2001:db8:1:2:bbbb::9", [], "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", [], "203.0.113.7"),
        ("testclient", [], "testclient"),
        (None, [], "unknown"),
    ],
)
def test_client_id(peer: str | None, forwarded: list[str], expected: str) -> None:
    assert client_id(request(peer, forwarded), PROXIES) == expected


def test_without_trusted_proxies_forwarded_headers_never_count() -> None:
    assert client_id(request("10.1.2.3", ["198.51.100.1"]), ()) == "10.1.2.3"
