"""The grantee's browser page: ``GET /app/`` and its static files under ``/app/static/``.

Unsigned on purpose: the page and its scripts hold no data. Everything the grantee sees is fetched by the page
itself with signed requests, and artifacts are fetched straight from S3 and decrypted in the browser, so the API
never sees plaintext or data keys here either.

Only a fixed list of files is served (no directory listing, no path ever joined from user input), each with an
explicit content type. The page's Content-Security-Policy allows scripts from this origin only (no inline
scripts) and connections to this origin and the S3 endpoint that presigned URLs point to.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from shared.errors import NotFound
from shared.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE = "index.html"
_JS = "text/javascript; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
STATIC_FILES: Mapping[str, str] = {
    "app.js": _JS,
    "auditchain.js": _JS,
    "cobblestone.js": _JS,
    "erc8128.js": _JS,
    "format.js": _JS,
    "sha256.js": _JS,
    "keywrap.js": _JS,
    "walletkey.js": _JS,
    "style.css": "text/css; charset=utf-8",
    "vendor/ethers.min.js": _JS,
    "vendor/nacl-fast.min.js": _JS,
    "vendor/ethers.LICENSE.md": _TEXT,
    "vendor/tweetnacl.LICENSE": _TEXT,
    "vendor/README.md": _TEXT,
}
# Revalidate on every load (ETag makes that a 304): file names carry no version, and a stale app.js next to a
# fresh cobblestone.js must never happen.
CACHE_CONTROL = "no-cache"
_ORIGIN_SAFE = re.compile(r"^https?://[a-z0-9.\-\[\]:]+$")
_AWS_SUFFIX = "amazonaws.com"


def storage_origins(settings: Settings) -> tuple[str, ...]:
    """Origins presigned URLs can point to: the public (else the internal) S3 endpoint, or AWS's S3 hosts."""
    endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    if endpoint:
        parts = urlsplit(endpoint)
        host = parts.netloc.rpartition("@")[2].lower()
        hosts = [host]
        if settings.s3_addressing_style != "path":
            hosts.append(f"{settings.s3_bucket}.{host}")
        candidates = [f"{parts.scheme.lower()}://{h}" for h in hosts]
    else:
        region, bucket = settings.s3_region, settings.s3_bucket
        candidates = [
            f"https://s3.{region}.{_AWS_SUFFIX}",
            f"https://{bucket}.s3.{region}.{_AWS_SUFFIX}",
            f"https://s3.{_AWS_SUFFIX}",
            f"https://{bucket}.s3.{_AWS_SUFFIX}",
        ]
    # Settings are operator input, but a ';' or space would still rewrite the policy: keep only plain origins.
    return tuple(dict.fromkeys(o for o in candidates if _ORIGIN_SAFE.fullmatch(o)))


def content_security_policy(settings: Settings) -> str:
    connect = " ".join(("'self'", *storage_origins(settings)))
    return (
        "default-src 'self'; "
        f"connect-src {connect}; "
        "script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def security_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        # Presigned URLs and operation ids must not leak to S3 or anyone else through Referer.
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "Cache-Control": CACHE_CONTROL,
    }


@lru_cache(maxsize=64)
def _etag(path: Path, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while piece := src.read(1 << 16):
            digest.update(piece)
    return f'"{digest.hexdigest()[:32]}"'


def _file_response(request: Request, name: str, media_type: str) -> Response:
    path = STATIC_DIR / name
    stat = path.stat()
    etag = _etag(path, stat.st_mtime_ns, stat.st_size)
    headers = {**security_headers(_settings(request)), "ETag": etag}
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def page(request: Request) -> Response:
    return _file_response(request, PAGE, "text/html; charset=utf-8")


async def page_redirect(request: Request) -> Response:
    # Relative, so it survives an ingress that strips a path prefix; the page's relative URLs need the slash.
    return RedirectResponse("app/", status_code=308)


async def page_config(request: Request) -> Response:
    """What the page needs to know before it signs anything: the origins the bucket's CORS rule lets download
    (so a page opened at ``localhost`` instead of ``127.0.0.1`` can say so and name the right address) and the
    delivery mode (in proxy mode storage origins do not matter). Public: both are visible to any browser anyway."""
    settings = _settings(request)
    body = {"storage_origins": list(settings.s3_cors_origins), "delivery_mode": settings.delivery_mode}
    return JSONResponse(body, headers={**security_headers(settings), "Cache-Control": "no-store"})


async def static_file(request: Request) -> Response:
    name = request.path_params["path"]
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFound("no such file", code="not_found")
    return _file_response(request, name, media_type)


routes: list[BaseRoute] = [
    Route("/app", page_redirect, methods=["GET", "HEAD"]),
    Route("/app/", page, methods=["GET", "HEAD"]),
    Route("/app/config.json", page_config, methods=["GET", "HEAD"]),
    Route("/app/static/{path:path}", static_file, methods=["GET", "HEAD"]),
]
