"""Signed endpoints by declaration: ``@signed(action, ...)`` makes the access decision and records it.

One decorator (like Starlette's ``authentication.requires``) does for every ``/api/v1`` data endpoint what each
used to repeat by hand:

1. verify the ERC-8128 signature (``api_service.auth.authenticate``; refusals are audited there);
2. with ``operation=True``, load ``{operation_id}``: a malformed or unknown id is 404 ``operation_not_found``,
   another signer's operation 403 ``not_grantee``, an expired one 404 ``expired``;
3. with ``artifact=True``, find ``{name}`` in the record: 404 ``artifact_not_found``;
4. leave the signer, the record and the artifact on ``request.state`` (read them with ``signer``, ``record``
   and ``artifact``) and run the endpoint, which does only its own work;
5. record the outcome: every refusal above as ``denied`` with its reason code and, once it names a real
   operation, the artifact asked for (so a refused delete says what it refused); the endpoint's success as
   ``allowed`` (reads) or ``ok`` (changes); an error the endpoint raises only when its code is declared in
   ``audited``, with the result given there (``operation_finished`` -> ``denied``...).

A success is recorded after the endpoint has done its work and before the response is sent: an access that
cannot be recorded is refused (503 ``audit_unavailable``) and its response discarded, a streamed body closed.
Denials are best effort (the request is refused either way). An endpoint that creates its operation sets
``request.state.record`` itself, so the event names it.

The fast path (``_prejudge``): when this process holds a cached copy of the operation's record, steps 2-3 are
decided from it before the nonce is admitted, and the outcome's event (a denial, or the success of an endpoint
declared ``at_once``: its answer depends on the record alone and cannot fail) is written by the admission's Redis
script right after the ``auth`` event, only if the record's version token is still the copy's. A request then
costs one Redis round trip in all, and the trail is event for event the same. If the record changed meanwhile, or
nothing is cached, the script writes no such event and the steps above run on the current record.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api_service.auth import authenticate
from api_service.endpoints.common import blocking, services
from shared import layout
from shared.auth.verifier import VerifiedSigner
from shared.errors import Expired, GrantDenied, NotFound, NotGrantee, StrongroomError, Unavailable
from shared.events import apublish, new_event
from shared.grants import standing
from shared.models import AuditAction, AuditEvent, OperationRecord, StoredArtifact, utcnow
from shared.records import aversion

Endpoint = Callable[[Request], Awaitable[Response]]
Result = Literal["allowed", "denied", "ok", "error"]
ActionOf = AuditAction | Callable[[Request], AuditAction] | None
AtOnce = Callable[[Request, OperationRecord], bool]


def signed(
    action: ActionOf = None,
    *,
    operation: bool = False,
    artifact: bool = False,
    result: Result = "allowed",
    audited: Mapping[str, Result] | None = None,
    at_once: AtOnce | None = None,
) -> Callable[[Endpoint], Endpoint]:
    """Declare a signed endpoint whose decisions are recorded as ``action`` (see the module docstring).

    ``action`` may depend on the request (a function of it); ``None`` verifies the signature and records nothing
    more (an endpoint that reads no one's data). ``result`` is the success's result; ``audited`` maps error
    codes the endpoint raises to the result they are recorded with. ``at_once(request, record)`` says that this
    request's answer depends on the record alone and cannot fail (no I/O, nothing left to validate), so its
    success may be recorded before the endpoint runs (see ``_prejudge``).
    """
    errors: Mapping[str, Result] = audited or {}

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            named = request.path_params.get("operation_id") if operation else None
            operation_id = named if named is not None and layout.is_operation_id(named) else None
            what = action(request) if callable(action) else action
            name = request.path_params["name"] if artifact else None
            verdict: list[_Verdict] = []
            judge = None
            if operation_id is not None and what is not None:
                judge = functools.partial(_judge, request, operation_id, what, name, result, at_once, verdict)
            # The record's version token comes back with the nonce's admission: one Redis round trip, not two; and
            # with a cached record the outcome's event is written in that same step (``_prejudge``).
            who = await authenticate(request, operation_id=operation_id, prejudge=judge)
            if what is None:
                return await endpoint(request)
            if who.prejudged:
                decided = verdict[0]
                if decided.refusal is not None:
                    raise decided.refusal  # its denial is recorded
                request.state.record = decided.record
                if name is not None:
                    request.state.artifact = decided.artifact
                return await endpoint(request)  # its success is recorded
            if not operation and what != "operation.create":
                await _in_standing(request, who, what)
            if operation:
                found = await load_operation(request, who, request.path_params["operation_id"], what, artifact=name)
                request.state.record = found
                if name is not None:
                    request.state.artifact = await _find(request, who, found, name, what)
            try:
                response = await endpoint(request)
            except StrongroomError as exc:
                outcome = errors.get(exc.code)
                if outcome is not None:
                    await audit(request, what, outcome, actor=who.address, **_subject(request, name), reason=exc.code)
                raise
            try:
                await audit(request, what, result, actor=who.address, **_subject(request, name))
            except Unavailable:
                await _discard(response)
                raise
            return response

        return wrapper

    return decorate


@dataclass(frozen=True)
class _Verdict:
    """An outcome decided from a cached record: its version, the event recording it, and what to do."""

    version: bytes
    event: AuditEvent
    record: OperationRecord
    artifact: StoredArtifact | None
    refusal: StrongroomError | None


def _judge(
    request: Request,
    operation_id: str,
    action: AuditAction,
    name: str | None,
    result: Result,
    at_once: AtOnce | None,
    verdict: list[_Verdict],
    signer: VerifiedSigner,
) -> tuple[bytes, AuditEvent] | None:
    """``Verifier.verify``'s ``prejudge``: ``_prejudge``'s verdict, kept in ``verdict`` for the wrapper."""
    decided = _prejudge(request, signer, operation_id, action, name, result, at_once)
    verdict[:] = [] if decided is None else [decided]
    return None if decided is None else (decided.version, decided.event)


def _prejudge(
    request: Request,
    signer: VerifiedSigner,
    operation_id: str,
    action: AuditAction,
    name: str | None,
    result: Result,
    at_once: AtOnce | None,
) -> _Verdict | None:
    """The request's outcome decided from this process's cached record, before the nonce is admitted.

    The checks are ``load_operation``'s and ``_find``'s, in their order, and the event is the one they (or the
    success after the endpoint) would publish. ``Verifier.verify`` hands it to the admission script, which writes
    it after the ``auth`` event only if the record's version token still is the one the copy was read under; so
    an outcome is never recorded, nor acted on, for a record that changed (a cancel, a deleted artifact, a
    cleanup), and the trail is the same as on the slow path. Without a cached copy, or for a success the endpoint
    could still fail (``at_once`` says no), it returns ``None``: the slow path decides after the admission.
    """
    cached = services(request).records.cache.peek(operation_id)
    if cached is None:
        return None
    version, found = cached
    refusal = _refusal(request, signer, found)
    stored = None
    if refusal is None and name is not None:
        stored = found.artifact(name)
        if stored is None:
            refusal = NotFound("no such artifact", code="artifact_not_found")
    if refusal is None and (at_once is None or not at_once(request, found)):
        return None
    event = new_event(
        action=action,
        result=result if refusal is None else "denied",
        actor=signer.address,
        operation_id=found.id,
        artifact=name,
        reason=None if refusal is None else refusal.code,
        request_id=getattr(request.state, "request_id", None),
    )
    return _Verdict(version, event, found, stored, refusal)


def signer(request: Request) -> VerifiedSigner:
    """The proven signer of a ``@signed`` request."""
    value: VerifiedSigner = request.state.signer
    return value


def record(request: Request) -> OperationRecord:
    """The operation a ``@signed(..., operation=True)`` request may access (grantee, not expired)."""
    value: OperationRecord = request.state.record
    return value


def artifact(request: Request) -> StoredArtifact:
    """The artifact a ``@signed(..., artifact=True)`` request names, as the record lists it."""
    value: StoredArtifact = request.state.artifact
    return value


def _subject(request: Request, name: str | None) -> dict[str, Any]:
    """What an event is about: the operation on ``request.state`` (loaded, or created by the endpoint)."""
    found: OperationRecord | None = getattr(request.state, "record", None)
    return {"operation_id": None if found is None else found.id, "artifact": name}


async def _discard(response: Response) -> None:
    """Release what an unsent response holds (a proxied download's open S3 body)."""
    close = getattr(getattr(response, "body_iterator", None), "aclose", None)
    if close is not None:
        await close()


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
    """The signer's live operation, or the typed error (audited as a denial).

    A malformed id is recorded without it, and so without the artifact: only what names a real operation is.
    """
    if not layout.is_operation_id(operation_id):
        await audit(request, action, "denied", actor=signer.address, reason="operation_not_found")
        raise NotFound("no such operation", code="operation_not_found")
    try:
        found = await current_record(request, operation_id, signer.record_version)
    except NotFound:
        await _deny(request, action, signer, operation_id, artifact, "operation_not_found")
        raise NotFound("no such operation", code="operation_not_found") from None
    refusal = _refusal(request, signer, found)
    if refusal is not None:
        await _deny(request, action, signer, operation_id, artifact, refusal.code)
        raise refusal
    return found


def _refusal(request: Request, signer: VerifiedSigner, found: OperationRecord) -> StrongroomError | None:
    """Why ``signer`` may not access ``found``, first reason first (grantee, grant in force, expiry), or ``None``."""
    if not is_grantee(signer, found):
        return NotGrantee("the signer is not the grantee of this operation")
    try:
        standing(services(request).grants, signer.address, utcnow())
    except GrantDenied as exc:
        return exc
    if found.is_expired():
        return Expired("this operation has expired")
    return None


async def current_record(request: Request, operation_id: str, token: bytes | None = None) -> OperationRecord:
    """The current record: from this process's cache when its version token in Redis still stands (no thread
    hop, no S3 read), else read from S3 in a worker thread (``shared.records``). ``token``: the version token
    read moments ago with the request's admission (else it is read here)."""
    svc = services(request)
    if token is None:
        try:
            token = await aversion(svc.redis, operation_id)
        except (RedisError, OSError):
            token = None  # no version to trust: read the truth, cache nothing
    cached = svc.records.cache.get(operation_id, token)
    return cached if cached is not None else await blocking(svc.records.load, operation_id, token)


async def _in_standing(
    request: Request,
    signer: VerifiedSigner,
    action: AuditAction,
    operation_id: str | None = None,
    artifact: str | None = None,
) -> None:
    """Reads of a grantee's data need a grant still in force (``grant_revoked``/``grant_expired``, audited)."""
    try:
        standing(services(request).grants, signer.address, utcnow())
    except GrantDenied as exc:
        await audit(
            request,
            action,
            "denied",
            actor=signer.address,
            operation_id=operation_id,
            artifact=artifact,
            reason=exc.code,
        )
        raise


def is_grantee(signer: VerifiedSigner, found: OperationRecord) -> bool:
    return hmac.compare_digest(signer.address.lower().encode(), found.grantee.lower().encode())


async def _find(
    request: Request, signer: VerifiedSigner, found: OperationRecord, name: str, action: AuditAction
) -> StoredArtifact:
    stored = found.artifact(name)
    if stored is None:
        await _deny(request, action, signer, found.id, name, "artifact_not_found")
        raise NotFound("no such artifact", code="artifact_not_found")
    return stored


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
