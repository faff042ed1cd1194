"""Presigned S3 GET URLs (SigV4 query authentication) without botocore's per-call machinery.

botocore's ``generate_presigned_url`` resolves the endpoint ruleset, serializes the operation, fires a dozen event
handlers and derives the signing key again on every call: about 1 ms of CPU, the largest single cost of the API's
download-URL request. Here the URL's shape (scheme, host, path prefix for path-style or virtual-hosted addressing,
region, signing name, session token) is learned once from botocore itself, by presigning a probe key, and every
later URL is built with the same encoding botocore uses and signed with a signing key cached per UTC day: one
SHA-256 and one HMAC per URL.

``learn`` checks its own output against botocore's byte for byte (the probe key and query carry characters that
need encoding) and returns ``None`` when they differ or anything is unusual, so the caller keeps botocore's path
(refreshable credentials are never handed here: see ``S3ObjectStore``). Keys and signatures are never logged.

Encoding, as botocore does it (``botocore.serialize`` and ``botocore.auth.SigV4QueryAuth``):

- the key goes into the path percent-encoded as UTF-8 with ``/`` and ``~`` kept (``{Key+}`` greedy label);
- query parameters (operation parameters first, in the caller's order, then the ``X-Amz-*`` ones) are encoded as
  UTF-8 with only ``-._~`` and alphanumerics kept; the canonical query string sorts the encoded pairs;
- the only signed header is ``host`` (lowercase, default port dropped); the payload is ``UNSIGNED-PAYLOAD``.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DISPOSITION = "response-content-disposition"
CONTENT_TYPE = "response-content-type"

# Characters that botocore encodes, keeps, or that sit next to an encoding boundary; the probe's URL is never
# fetched (presigning needs no network) and the key need not exist.
PROBE_KEY = "strongroom-presign-probe/a b+~%é!'()*;=@$,&[]#?ü/x.enc"
PROBE_DISPOSITION = "attachment; filename=\"r_sum_ +~%.md\"; filename*=UTF-8''r%C3%A9sum%C3%A9 +~.md"
PROBE_CONTENT_TYPE = "text/markdown; charset=utf-8"
PROBE_TTL = 900

_clock = time.time  # tests replace it to freeze time alongside botocore's clock


# ``quote`` walks the string byte by byte in Python; the same keys, filenames and content types come back request
# after request, so the encodings are memoised (bounded; they are URL parts, nothing secret).
@functools.lru_cache(maxsize=4096)
def _encode_query(value: str) -> str:
    """botocore's ``percent_encode``: UTF-8, only RFC 3986 unreserved characters kept."""
    return quote(value, safe="-_.~")


@functools.lru_cache(maxsize=4096)
def _encode_key(key: str) -> str:
    """botocore's greedy-label encoding of the object key in the path."""
    return quote(key, safe="/~")


def host_header(url: str) -> str:
    """The ``host`` header botocore signs for ``url``: lowercase, no userinfo, default port dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class QueryPresigner:
    """Presigns GET URLs for one bucket at one endpoint with fixed credentials. Thread-safe: the only mutable
    state is the cached signing key, replaced as a whole tuple."""

    __slots__ = (
        "_base",
        "_base_path",
        "_credential_prefix",
        "_credential_tail",
        "_host",
        "_key_cache",
        "_region",
        "_scope_tail",
        "_secret",
        "_service",
        "_token_param",
    )

    def __init__(
        self,
        *,
        base_url: str,
        access_key: str,
        secret_key: str,
        token: str | None,
        region: str,
        service: str = "s3",
    ) -> None:
        """``base_url``: scheme, host and path prefix up to the key, e.g. ``http://127.0.0.1:8333/bucket/``
        (path-style) or ``https://bucket.s3.eu-west-3.amazonaws.com/`` (virtual-hosted)."""
        self._base = base_url
        self._base_path = urlsplit(base_url).path
        self._host = host_header(base_url)
        self._region = region
        self._service = service
        self._credential_prefix = _encode_query(access_key + "/")
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._credential_tail = _encode_query(self._scope_tail)
        self._secret = ("AWS4" + secret_key).encode("utf-8")
        # botocore adds the parameter whenever the credentials carry a token, even an empty one.
        self._token_param = None if token is None else ("X-Amz-Security-Token", _encode_query(token))
        self._key_cache: tuple[str, bytes] = ("", b"")

    def __repr__(self) -> str:  # never the secret or the token
        return f"QueryPresigner(base_url={self._base!r}, region={self._region!r}, service={self._service!r})"

    def _signing_key(self, day: str) -> bytes:
        cached_day, key = self._key_cache
        if cached_day == day:
            return key
        key = hmac.digest(self._secret, day.encode("ascii"), "sha256")
        for part in (self._region, self._service, "aws4_request"):
            key = hmac.digest(key, part.encode("utf-8"), "sha256")
        self._key_cache = (day, key)
        return key

    def presign_get(
        self, key: str, ttl: int, query: Sequence[tuple[str, str]] = (), *, now: float | None = None
    ) -> tuple[str, int]:
        """``(url, signed_at)``: a GET URL for ``key`` valid ``ttl`` seconds from ``signed_at`` (whole seconds,
        the ``X-Amz-Date``); ``query`` are operation parameters such as ``response-content-disposition``."""
        signed_at = int(_clock() if now is None else now)
        stamp = time.strftime(TIMESTAMP_FORMAT, time.gmtime(signed_at))
        day = stamp[:8]
        pairs = [(_encode_query(name), _encode_query(value)) for name, value in query]
        operation = "&".join(f"{name}={value}" for name, value in pairs)
        auth = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self._credential_prefix}{day}{self._credential_tail}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(ttl)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self._token_param is not None:
            auth.append(self._token_param)
        pairs.extend(auth)
        canonical_query = "&".join(f"{name}={value}" for name, value in sorted(pairs))
        encoded_key = _encode_key(key)
        canonical_request = (
            f"GET\n{self._base_path}{encoded_key}\n{canonical_query}\nhost:{self._host}\n\nhost\n{UNSIGNED_PAYLOAD}"
        )
        string_to_sign = (
            f"{ALGORITHM}\n{stamp}\n{day}{self._scope_tail}\n"
            f"{hashlib.sha256(canonical_request.encode('utf-8')).hexdigest()}"
        )
        signature = hmac.digest(self._signing_key(day), string_to_sign.encode("utf-8"), "sha256").hex()
        auth_query = "&".join(f"{name}={value}" for name, value in auth)
        path = self._base + encoded_key
        prefix = f"{path}?{operation}&" if operation else f"{path}?"
        return f"{prefix}{auth_query}&X-Amz-Signature={signature}", signed_at


def learn(client: S3Client, bucket: str, credentials: Any) -> QueryPresigner | None:
    """A presigner for ``bucket`` that reproduces ``client``'s presigned GET URLs, or ``None``.

    ``credentials``: the client's fixed botocore ``Credentials`` (``access_key``, ``secret_key``, ``token``).
    The probe is presigned by botocore (no network), taken apart, and rebuilt here at botocore's own
    ``X-Amz-Date``; any difference, or a URL that is not plain SigV4 query authentication, means ``None``.
    """
    probe_query = ((DISPOSITION, PROBE_DISPOSITION), (CONTENT_TYPE, PROBE_CONTENT_TYPE))
    expected = client.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": bucket,
            "Key": PROBE_KEY,
            "ResponseContentDisposition": PROBE_DISPOSITION,
            "ResponseContentType": PROBE_CONTENT_TYPE,
        },
        ExpiresIn=PROBE_TTL,
    )
    base, separator, query = expected.partition("?")
    encoded_key = _encode_key(PROBE_KEY)
    if not separator or not base.endswith(encoded_key):
        return None
    params = dict(pair.partition("=")[::2] for pair in query.split("&"))
    scope = unquote(params.get("X-Amz-Credential", "")).split("/")
    access_key, secret_key, token = credentials.access_key, credentials.secret_key, credentials.token
    if len(scope) != 5 or scope[0] != access_key or scope[4] != "aws4_request":
        return None
    try:
        signed_at = calendar.timegm(time.strptime(params.get("X-Amz-Date", ""), TIMESTAMP_FORMAT))
    except ValueError:
        return None
    presigner = QueryPresigner(
        base_url=base[: -len(encoded_key)],
        access_key=access_key,
        secret_key=secret_key,
        token=token,
        region=scope[2],
        service=scope[3],
    )
    mine, _ = presigner.presign_get(PROBE_KEY, PROBE_TTL, probe_query, now=signed_at)
    return presigner if hmac.compare_digest(mine.encode("utf-8"), expected.encode("utf-8")) else None
