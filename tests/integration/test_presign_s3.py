"""URLs from the SigV4 query presigner (``shared.storage.presign``) against the real SeaweedFS: they download the
object, carry the requested headers, stop working when any signed part is changed, and expire after ``ttl``."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from shared.settings import Settings
from shared.storage.presign import QueryPresigner
from shared.storage.s3 import S3ObjectStore, content_disposition

pytestmark = pytest.mark.integration

BODY = b"presigned by strongroom"


@pytest.fixture(scope="module")
def fast_store(object_store: S3ObjectStore) -> S3ObjectStore:
    store = S3ObjectStore(object_store.client, object_store.bucket)
    store.presign_get("probe", ttl=60)
    assert isinstance(store._presigner, QueryPresigner), "fixed SeaweedFS keys must take the fast path"
    return store


@pytest.fixture
def stored(fast_store: S3ObjectStore) -> str:
    # Characters the key encoding has to get right: space, '+', '~', '%', '&', '=', non-ASCII, an emoji.
    key = f"t-{secrets.token_hex(4)}/artifacts/0123456789abcdef/Rés umé +~%&=;中😀.md.enc"
    fast_store.put_bytes(key, BODY)
    return key


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def test_url_downloads_the_object_with_the_requested_headers(fast_store: S3ObjectStore, stored: str) -> None:
    filename = 'Résumé "final" +~%.md'
    url = fast_store.presign_get(stored, ttl=60, filename=filename, content_type="text/markdown; charset=utf-8").url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == BODY
    assert response.headers["content-disposition"] == content_disposition(filename)
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"


def test_url_without_response_overrides_downloads(fast_store: S3ObjectStore, stored: str) -> None:
    response = httpx.get(fast_store.presign_get(stored, ttl=60).url)
    assert response.status_code == 200 and response.content == BODY


def _tampered(url: str, what: str, stored: str) -> str:
    if what == "key":
        return url.replace(quote(stored.rsplit("/", 1)[1], safe="~"), "other.md.enc")
    if what == "expires":
        return _with_query(url, **{"X-Amz-Expires": "604800"})
    if what == "date":
        date = dict(parse_qsl(urlsplit(url).query))["X-Amz-Date"]
        return _with_query(url, **{"X-Amz-Date": date[:-3] + ("00Z" if date[-3:] != "00Z" else "01Z")})
    if what == "disposition":
        return _with_query(url, **{"response-content-disposition": 'attachment; filename="evil.exe"'})
    if what == "added type":
        return _with_query(url, **{"response-content-type": "text/html"})
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    return _with_query(url, **{"X-Amz-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]})


@pytest.mark.parametrize("what", ["key", "expires", "date", "disposition", "added type", "signature"])
def test_tampered_url_is_refused(fast_store: S3ObjectStore, stored: str, what: str) -> None:
    url = fast_store.presign_get(stored, ttl=60, filename="report.md").url
    bad = _tampered(url, what, stored)
    assert bad != url
    assert httpx.get(url).status_code == 200  # the untouched URL works
    assert httpx.get(bad).status_code == 403


def test_url_expires_after_ttl(fast_store: S3ObjectStore, stored: str) -> None:
    url = fast_store.presign_get(stored, ttl=1).url
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == "1"
    time.sleep(2.1)
    assert httpx.get(url).status_code == 403


def test_public_endpoint_url_is_signed_for_the_public_host(settings: Settings, stored: str) -> None:
    """``STRONGROOM_S3_PUBLIC_ENDPOINT_URL``: the URL names (and signs) the host clients use, e.g. behind a proxy
    that forwards to S3 with the Host header unchanged."""
    assert settings.s3_endpoint_url
    port = urlsplit(settings.s3_endpoint_url).port
    public_host = f"s3.public.test:{port}"
    store = S3ObjectStore.from_settings(replace(settings, s3_public_endpoint_url=f"http://{public_host}"))
    url = store.presign_get(stored, ttl=60, filename="report.md").url
    assert isinstance(store._presigner, QueryPresigner)
    parts = urlsplit(url)
    assert parts.netloc == public_host
    direct: Any = parts._replace(netloc=urlsplit(settings.s3_endpoint_url).netloc)
    forwarded = httpx.get(urlunsplit(direct), headers={"Host": public_host})
    assert forwarded.status_code == 200 and forwarded.content == BODY
    assert httpx.get(urlunsplit(direct)).status_code == 403  # signed for the public host, not the internal one
