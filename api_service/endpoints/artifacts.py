"""``/api/v1/operations/{id}/artifacts``: list, deliver (presigned 307, JSON, or proxied ciphertext), delete.

Bytes never pass through the API in the default ``presigned`` mode. In ``proxy`` mode the ciphertext is streamed
from S3 chunk by chunk (never buffered whole), with single-range ``Range`` support so clients can resume. Every
storage call (opening the object, each chunk, closing it) runs in a worker thread: a slow S3 delays that download,
never the event loop.

Audit actions say what really happened: handing out a URL (``artifact.url``: presigned mode, or the JSON ticket
in proxy mode, whose ``url`` is this same route) is not a download; only a proxied byte stream is
``artifact.download``. ``HEAD`` in proxy mode answers the headers from the object's metadata, no body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from api_service.access import artifact, record, signed
from api_service.endpoints.common import blocking, json_response, services
from api_service.errors import RangeNotSatisfiable
from api_service.http import ByteRange, parse_range, prefers_json
from api_service.views import collection_json
from shared.errors import NotFound
from shared.models import (
    ENCRYPTION_SCHEME,
    AuditAction,
    OperationRecord,
    StoredArtifact,
    artifact_url,
    format_time,
)
from shared.storage.base import PresignedUrl
from shared.storage.s3 import content_disposition


def _always(request: Request, found: OperationRecord) -> bool:
    return True


@signed("artifact.list", operation=True, at_once=_always)
async def list_artifacts(request: Request) -> Response:
    return json_response(collection_json(record(request)))


def _action(request: Request) -> AuditAction:
    """What this request would do, for its audit events (denials included)."""
    proxy = services(request).settings.delivery_mode == "proxy"
    if not proxy or prefers_json(request.headers.get("accept")):
        return "artifact.url"
    if request.method == "HEAD":
        return "artifact.list"  # metadata only: size and checksums, like the artifact list
    return "artifact.download"


def _url_at_once(request: Request, found: OperationRecord) -> bool:
    """A URL or ticket is minted without I/O (a proxied download or HEAD reads S3, and may fail)."""
    svc = services(request)
    return _action(request) == "artifact.url" and (svc.settings.delivery_mode == "proxy" or svc.store.presign_is_local)


@signed(_action, operation=True, artifact=True, at_once=_url_at_once)
async def get_artifact(request: Request) -> Response:
    current, stored = record(request), artifact(request)
    action = _action(request)
    if services(request).settings.delivery_mode != "proxy":
        return await _presigned(request, current, stored)
    if action == "artifact.url":
        return _proxy_ticket(request, current, stored)
    if action == "artifact.list":
        return await _proxy_head(request, current, stored)
    return await _proxy(request, current, stored)


@signed("artifact.delete", operation=True, artifact=True, result="ok")
async def delete_artifact(request: Request) -> Response:
    current, name = record(request), artifact(request).name
    svc = services(request)
    removed: list[StoredArtifact] = []

    def remove(current: OperationRecord) -> OperationRecord:
        artifact = current.artifact(name)
        if artifact is None:
            raise NotFound("no such artifact", code="artifact_not_found")
        removed[:] = [artifact]  # the keys come from the record as it is under the lock
        return current.evolve(artifacts=[a.model_dump() for a in current.artifacts if a.name != name])

    # Record first: the artifact vanishes for readers; a crash before the object delete leaves an orphan the
    # sweep removes, never a record pointing at nothing.
    await blocking(svc.records.update, current.id, remove)
    await blocking(svc.store.delete_many, removed[0].object_keys(current.id))
    if svc.quotas is not None:
        svc.quotas.credit(current.grantee, removed[0].size)
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def artifact_headers(artifact: StoredArtifact) -> dict[str, str]:
    return {
        "X-Artifact-Checksum": artifact.checksum,
        "X-Artifact-Ciphertext-Checksum": artifact.ciphertext_checksum,
        "X-Artifact-Encryption": ENCRYPTION_SCHEME,
        "Cache-Control": "no-store",
    }


async def _presigned(request: Request, record: OperationRecord, artifact: StoredArtifact) -> Response:
    svc = services(request)
    key = artifact.object_key(record.id)

    def presign() -> PresignedUrl:
        return svc.store.presign_get(key, ttl=svc.settings.presign_ttl, filename=artifact.name)

    url = presign() if svc.store.presign_is_local else await blocking(presign)  # a thread hop costs more
    as_json = prefers_json(request.headers.get("accept"))
    request.app.state.metrics.urls_minted.labels(delivery="json" if as_json else "redirect").inc()
    if as_json:
        return json_response(
            _ticket_body(artifact, url.url, format_time(url.expires_at)), 200, artifact_headers(artifact)
        )
    return RedirectResponse(url.url, status_code=307, headers=artifact_headers(artifact))


def _ticket_body(artifact: StoredArtifact, url: str, expires_at: str | None) -> dict[str, Any]:
    return {
        "url": url,
        "expires_at": expires_at,
        "size": artifact.size,
        "content_type": artifact.content_type,
        "checksum": artifact.checksum,
        "ciphertext_checksum": artifact.ciphertext_checksum,
        "encryption": artifact.encryption.model_dump(mode="json"),
    }


def _proxy_ticket(request: Request, record: OperationRecord, artifact: StoredArtifact) -> Response:
    """Proxy mode, JSON preferred: the ticket names this same route (signed GETs, no expiry); nothing is read."""
    request.app.state.metrics.urls_minted.labels(delivery="json").inc()
    body = _ticket_body(artifact, artifact_url(record.id, artifact.name), None)
    return json_response(body, 200, artifact_headers(artifact))


def _proxy_headers(artifact: StoredArtifact) -> dict[str, str]:
    return {
        **artifact_headers(artifact),
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(artifact.name + ".enc"),
    }


async def _proxy_head(request: Request, record: OperationRecord, artifact: StoredArtifact) -> Response:
    """The headers a GET would answer, from the object's metadata: no body, no S3 GET, no download recorded.

    ``Range`` is ignored, as RFC 9110 section 14.2 requires for methods other than GET.
    """
    svc = services(request)
    info = await blocking(svc.store.head, artifact.object_key(record.id))  # NotFound -> 404 like a GET
    headers = {**_proxy_headers(artifact), "Content-Length": str(info.size)}
    return Response(status_code=200, headers=headers, media_type="application/octet-stream")


async def _proxy(request: Request, record: OperationRecord, artifact: StoredArtifact) -> Response:
    """The ciphertext, streamed (``Range`` honoured). Returned unsent: if ``@signed`` cannot record the download
    it closes the body (``_Body.aclose``), which releases the open S3 object."""
    svc = services(request)
    size = artifact.ciphertext_size
    wanted = parse_range(request.headers.get("range"), size)
    key = artifact.object_key(record.id)
    headers = _proxy_headers(artifact)
    if wanted is None:
        status, length, first_byte, last_byte = 200, size, None, None
    else:
        status, length, first_byte, last_byte = 206, wanted.length, wanted.first, wanted.last
        headers["Content-Range"] = f"bytes {wanted.first}-{wanted.last}/{size}"
    # Opening the object is a blocking S3 GetObject (timeouts, retries): never on the event loop.
    chunks = await blocking(svc.store.open_range, key, first_byte, last_byte)
    try:
        # Pull the first chunk before answering, so a missing object is a clean 404, not a broken 200 stream.
        first = await blocking(next, chunks, b"")
    except BaseException:
        await _close(chunks)
        raise
    request.app.state.metrics.urls_minted.labels(delivery="proxy").inc()
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        _Body(first, chunks),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


class _Body:
    """``first``, then the rest, each chunk fetched in a worker thread; the object is closed off the loop too.

    A class rather than an async generator so ``aclose`` releases the object even when the body was never
    iterated (a response discarded before it was sent).
    """

    def __init__(self, first: bytes, chunks: Iterator[bytes]) -> None:
        self.first, self.chunks = first, chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            if self.first:
                yield self.first
            async for chunk in iterate_in_threadpool(self.chunks):
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await _close(self.chunks)


async def _close(chunks: Iterator[bytes]) -> None:
    """Release the S3 body (a generator's ``finally``) in a thread, even when the client went away."""
    close = getattr(chunks, "close", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await blocking(close)


__all__ = ["ByteRange", "RangeNotSatisfiable", "delete_artifact", "get_artifact", "list_artifacts"]
