"""``/api/v1/operations/{id}/artifacts``: list, deliver (presigned 307, JSON, or proxied ciphertext), delete.

Bytes never pass through the API in the default ``presigned`` mode. In ``proxy`` mode the ciphertext is streamed
from S3 chunk by chunk (never buffered whole), with single-range ``Range`` support so clients can resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from api_service.auth import authenticate
from api_service.endpoints.common import audit, blocking, json_response, load_operation, services
from api_service.errors import RangeNotSatisfiable
from api_service.http import ByteRange, parse_range, prefers_json
from api_service.views import collection
from shared.auth.verifier import VerifiedSigner
from shared.errors import NotFound
from shared.models import ENCRYPTION_SCHEME, AuditAction, OperationRecord, StoredArtifact, format_time
from shared.storage.s3 import content_disposition


async def list_artifacts(request: Request) -> Response:
    signer = await authenticate(request)
    record = await load_operation(request, signer, request.path_params["operation_id"], "artifact.list")
    await audit(request, "artifact.list", "allowed", actor=signer.address, operation_id=record.id)
    return json_response(collection(record).model_dump(mode="json"))


async def get_artifact(request: Request) -> Response:
    signer = await authenticate(request)
    name = request.path_params["name"]
    proxy = services(request).settings.delivery_mode == "proxy"
    action: AuditAction = "artifact.download" if proxy else "artifact.url"
    record = await load_operation(request, signer, request.path_params["operation_id"], action, artifact=name)
    artifact = await _find(request, signer, record, name, action)
    if proxy:
        return await _proxy(request, signer, record, artifact)
    return await _presigned(request, signer, record, artifact)


async def delete_artifact(request: Request) -> Response:
    signer = await authenticate(request)
    name = request.path_params["name"]
    record = await load_operation(
        request, signer, request.path_params["operation_id"], "artifact.delete", artifact=name
    )
    await _find(request, signer, record, name, "artifact.delete")
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
    await blocking(svc.records.update, record.id, remove)
    await blocking(svc.store.delete_many, removed[0].object_keys(record.id))
    await audit(request, "artifact.delete", "ok", actor=signer.address, operation_id=record.id, artifact=name)
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


async def _find(
    request: Request, signer: VerifiedSigner, record: OperationRecord, name: str, action: AuditAction
) -> StoredArtifact:
    artifact = record.artifact(name)
    if artifact is None:
        await audit(
            request,
            action,
            "denied",
            actor=signer.address,
            operation_id=record.id,
            reason="artifact_not_found",
        )
        raise NotFound("no such artifact", code="artifact_not_found")
    return artifact


def artifact_headers(artifact: StoredArtifact) -> dict[str, str]:
    return {
        "X-Artifact-Checksum": artifact.checksum,
        "X-Artifact-Ciphertext-Checksum": artifact.ciphertext_checksum,
        "X-Artifact-Encryption": ENCRYPTION_SCHEME,
        "Cache-Control": "no-store",
    }


async def _presigned(
    request: Request, signer: VerifiedSigner, record: OperationRecord, artifact: StoredArtifact
) -> Response:
    svc = services(request)
    key = artifact.object_key(record.id)
    url = await blocking(lambda: svc.store.presign_get(key, ttl=svc.settings.presign_ttl, filename=artifact.name))
    as_json = prefers_json(request.headers.get("accept"))
    await audit(
        request, "artifact.url", "allowed", actor=signer.address, operation_id=record.id, artifact=artifact.name
    )
    request.app.state.metrics.urls_minted.labels(delivery="json" if as_json else "redirect").inc()
    if as_json:
        body = {
            "url": url.url,
            "expires_at": format_time(url.expires_at),
            "size": artifact.size,
            "content_type": artifact.content_type,
            "checksum": artifact.checksum,
            "ciphertext_checksum": artifact.ciphertext_checksum,
            "encryption": artifact.encryption.model_dump(mode="json"),
        }
        return json_response(body, 200, artifact_headers(artifact))
    return RedirectResponse(url.url, status_code=307, headers=artifact_headers(artifact))


async def _proxy(
    request: Request, signer: VerifiedSigner, record: OperationRecord, artifact: StoredArtifact
) -> Response:
    svc = services(request)
    size = artifact.ciphertext_size
    wanted = parse_range(request.headers.get("range"), size)
    key = artifact.object_key(record.id)
    headers = {
        **artifact_headers(artifact),
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(artifact.name + ".enc"),
    }
    chunks: Iterator[bytes]
    if wanted is None:
        status, length = 200, size
        chunks = svc.store.open_range(key)
    else:
        status, length = 206, wanted.length
        headers["Content-Range"] = f"bytes {wanted.first}-{wanted.last}/{size}"
        chunks = svc.store.open_range(key, wanted.first, wanted.last)
    # Pull the first chunk before answering, so a missing object is a clean 404, not a broken 200 stream.
    first = await blocking(next, chunks, b"")
    await audit(
        request, "artifact.download", "allowed", actor=signer.address, operation_id=record.id, artifact=artifact.name
    )
    request.app.state.metrics.urls_minted.labels(delivery="proxy").inc()
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        _prepend(first, iterate_in_threadpool(chunks)),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


__all__ = ["ByteRange", "RangeNotSatisfiable", "delete_artifact", "get_artifact", "list_artifacts"]
