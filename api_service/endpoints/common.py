"""What every operation endpoint shares: the services, the access decision and its audit trail.

``load_operation`` is the single access decision after the signature: a malformed or unknown id is 404
``operation_not_found``, another signer's operation is 403 ``not_grantee``, an expired one 404 ``expired``. Every
decision, allowed or denied, is published as an audit event; an allowed access that cannot be recorded is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from api_service.services import ApiServices
from shared import layout
from shared.auth.verifier import VerifiedSigner
from shared.errors import Expired, NotFound, NotGrantee, Unavailable
from shared.events import apublish, new_event
from shared.models import AuditAction, OperationRecord

T = TypeVar("T")


def services(request: Request) -> ApiServices:
    svc: ApiServices = request.app.state.services
    return svc


async def blocking(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (boto3, sync Redis, Celery) off the event loop."""
    return await anyio.to_thread.run_sync(func, *args)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


async def audit(
    request: Request,
    action: AuditAction,
    result: str,
    *,
    actor: str | None,
    operation_id: str | None = None,
    artifact: str | None = None,
    reason: str | None = None,
) -> None:
    """Publish one decision. Allowed accesses fail closed (503) if unrecorded; denials are best effort."""
    event = new_event(
        action=action,
        result=result,
        actor=actor,
        operation_id=operation_id,
        artifact=artifact,
        reason=reason,
        request_id=getattr(request.state, "request_id", None),
    )
    try:
        await apublish(services(request).redis, event)
    except (RedisError, OSError):
        if result != "denied":
            raise Unavailable("the audit log is unavailable", code="audit_unavailable") from None


async def load_operation(
    request: Request, signer: VerifiedSigner, operation_id: str, action: AuditAction, *, artifact: str | None = None
) -> OperationRecord:
    """The signer's live operation, or the typed error (audited as a denial)."""
    if not layout.is_operation_id(operation_id):
        await audit(request, action, "denied", actor=signer.address, reason="operation_not_found")
        raise NotFound("no such operation", code="operation_not_found")
    try:
        record = await blocking(services(request).records.get, operation_id)
    except NotFound:
        await _deny(request, action, signer, operation_id, artifact, "operation_not_found")
        raise NotFound("no such operation", code="operation_not_found") from None
    if not is_grantee(signer, record):
        await _deny(request, action, signer, operation_id, artifact, "not_grantee")
        raise NotGrantee("the signer is not the grantee of this operation")
    if record.is_expired():
        await _deny(request, action, signer, operation_id, artifact, "expired")
        raise Expired("this operation has expired")
    return record


def is_grantee(signer: VerifiedSigner, record: OperationRecord) -> bool:
    return hmac.compare_digest(signer.address.lower().encode(), record.grantee.lower().encode())


async def _deny(
    request: Request,
    action: AuditAction,
    signer: VerifiedSigner,
    operation_id: str,
    artifact: str | None,
    reason: str,
) -> None:
    await audit(
        request, action, "denied", actor=signer.address, operation_id=operation_id, artifact=artifact, reason=reason
    )
