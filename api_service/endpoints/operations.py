"""``/api/v1/operations``: create, list, read, cancel, and the access log.

Create follows the agreed order: the record (pending), its sealed input and the grantee index are stored first,
then the run task is sent by name. If the broker refuses the message the record is marked failed and the client
gets 503, so no operation waits forever for a worker that was never told.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

import anyio
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api_service.access import current_record, record, signed, signer
from api_service.endpoints.common import blocking, json_response, services
from api_service.long_poll import MAX_WAIT
from api_service.views import API_PREFIX, dump_operation, operation_response, operation_view
from shared import audit_log, bounded_json, layout
from shared.agents import agent_names
from shared.cancel import request_cancel
from shared.contracts import RunOperation
from shared.crypto.keywrap import parse_public_key
from shared.errors import Expired, JsonTooDeep, NotFound, Unavailable, ValidationFailed
from shared.grants import grant_for, operation_expiry
from shared.models import (
    CreateOperationRequest,
    CreateOperationResponse,
    OperationRecord,
    OperationResult,
    expiry,
    utcnow,
)
from shared.settings import Settings

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
DEFAULT_PAGE = 20
MAX_PAGE = 100
DEFAULT_LOG_PAGE = 500  # events; a page is whole batches, at least one
MAX_LOG_PAGE = 1000
MAX_LOG_PAGE_BYTES = 1 << 20  # batch plaintext per page (served twice: as events and as base64 bytes)
_LIMIT_RE = re.compile(r"[0-9]{1,6}")
LOG_CURSOR_PATTERN = r"^[1-9][0-9]{0,11}$"  # a batch sequence (access-log page cursor); the OpenAPI document too
CURSOR_PATTERN = r"^[0-9]{12}_[a-z0-9][a-z0-9-]{0,47}_[a-z2-7]{26}$"  # an operation list cursor
_LOG_CURSOR_RE = re.compile(LOG_CURSOR_PATTERN)
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_FIELD_CODES = {
    "agent": "agent_unknown",
    "input": "input_invalid",
    "encryption_public_key": "encryption_public_key_invalid",
    "retention_days": "retention_days_invalid",
}


# --- create -----------------------------------------------------------------------------------------------


_GRANT_REFUSALS: dict[str, Literal["denied"]] = {
    code: "denied" for code in ("no_grant", "agent_not_granted", "grant_expired", "quota_exceeded")
}


@signed("operation.create", result="ok", audited={"queue_unavailable": "error", **_GRANT_REFUSALS})
async def create_operation(request: Request) -> Response:
    svc = services(request)
    body = parse_create(await request.body(), svc.settings)
    now = utcnow()
    grantee = signer(request).address.lower()
    grant = grant_for(svc.grants, grantee, body.agent, now)
    days = _retention_days(body.retention_days, svc.settings.artifact_retention_days, grant.max_retention_days)
    created = OperationRecord(
        id=layout.new_operation_id(body.agent),
        agent=body.agent,
        grantee=grantee,
        encryption_public_key=body.encryption_public_key,
        created_at=now,
        expires_at=operation_expiry(expiry(now, days), grant),
    )
    if svc.quotas is not None:
        await blocking(svc.quotas.admit, grantee, created.id, grant.quotas, now)
    try:
        await blocking(svc.records.create, created, body.input)
    except BaseException:
        if svc.quotas is not None:
            svc.quotas.finished(grantee, created.id)
        raise
    request.state.record = created  # the operation the audit event names, from here on
    try:
        await blocking(svc.producer.send, RunOperation.TASK, RunOperation(operation_id=created.id).model_dump())
    except Exception as exc:  # any broker failure: the record must not stay pending unnoticed
        await blocking(svc.records.update, created.id, _mark_unqueued)
        if svc.quotas is not None:
            svc.quotas.finished(grantee, created.id)
        raise Unavailable(
            "the work queue is unavailable; the operation was marked failed", code="queue_unavailable"
        ) from exc
    answer = CreateOperationResponse(
        id=created.id, status=created.status, created_at=created.created_at, expires_at=created.expires_at
    )
    return json_response(answer.model_dump(mode="json"), 202, {"Location": f"{API_PREFIX}/operations/{created.id}"})


def _retention_days(asked: int | None, server_max: int, grant_max: int | None) -> int:
    """The retention an operation gets: as asked, within the grant's maximum; by default the longest allowed."""
    allowed = min(server_max, grant_max or server_max)
    if asked is None:
        return allowed
    if asked > allowed:
        raise ValidationFailed(
            f"retention_days must be at most {allowed} under this address's grant", code="retention_days_invalid"
        )
    return asked


def parse_create(raw: bytes, settings: Settings) -> CreateOperationRequest:
    """Body -> request, or ``ValidationFailed`` whose ``code`` names the offending field."""
    try:
        document = bounded_json.loads(raw)  # JsonTooDeep (422 json_too_deep) past MAX_JSON_DEPTH levels
    except JsonTooDeep:
        raise
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("the body is not valid JSON", code="body_invalid") from None
    if not isinstance(document, dict):
        raise ValidationFailed("the body must be a JSON object", code="body_invalid")
    try:
        body = CreateOperationRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = str(first["loc"][0]) if first.get("loc") else ""
        code = _FIELD_CODES.get(field, "body_invalid")
        raise ValidationFailed(f"{field or 'body'}: {first.get('msg', 'invalid')}", code=code) from None
    names = agent_names(settings)
    if body.agent not in names:
        available = ", ".join(sorted(names)) or "none"
        raise ValidationFailed(
            f"no agent named {body.agent!r} on this server; available: {available}", code="agent_unknown"
        )
    parse_public_key(body.encryption_public_key)  # raises encryption_public_key_invalid
    if body.retention_days is not None and not 1 <= body.retention_days <= settings.artifact_retention_days:
        raise ValidationFailed(
            f"retention_days must be between 1 and {settings.artifact_retention_days}", code="retention_days_invalid"
        )
    return body


def _mark_unqueued(record: OperationRecord) -> OperationRecord:
    if record.status != "pending":
        return record
    return record.evolve(
        status="failed",
        finished_at=utcnow(),
        result=OperationResult(status="error", summary="the operation could not be queued", execution_time=0),
    )


# --- list -------------------------------------------------------------------------------------------------


@signed("operation.list")
async def list_operations(request: Request) -> Response:
    address = signer(request).address
    svc = services(request)
    limit, cursor, status = _list_params(request)
    ids, next_cursor = await blocking(lambda: svc.records.list_ids(address, cursor=cursor, limit=limit))
    records = await _fetch_many(svc.records.get, ids)
    now = utcnow()
    page = [
        dump_operation(operation_response(r))
        for r in records
        if r is not None
        and r.grantee == address.lower()
        and not r.is_expired(now)
        and (status is None or r.status == status)
    ]
    return json_response({"operations": page, "next_cursor": next_cursor})


def _list_params(request: Request) -> tuple[int, str | None, str | None]:
    query = request.query_params
    limit = page_limit(query.get("limit"), default=DEFAULT_PAGE, maximum=MAX_PAGE)
    cursor = query.get("cursor") or None
    if cursor is not None and not _CURSOR_RE.fullmatch(cursor):
        raise ValidationFailed("cursor is not one this server issued", code="cursor_invalid")
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", code="status_invalid")
    return limit, cursor, status


def page_limit(raw: str | None, *, default: int, maximum: int) -> int:
    """``?limit=``: 1 to ``maximum`` in ASCII digits (``str.isdigit()`` passes '²', which ``int()`` rejects)."""
    if raw is None:
        return default
    if not _LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ValidationFailed(f"limit must be an integer from 1 to {maximum}", code="limit_invalid")
    return int(raw)


async def _fetch_many(get: Any, ids: list[str]) -> list[OperationRecord | None]:
    """Read a page of records concurrently (each is one S3 GET); a record gone since listing is skipped."""
    results: list[OperationRecord | None] = [None] * len(ids)

    async def fetch(index: int, operation_id: str) -> None:
        try:
            results[index] = await blocking(get, operation_id)
        except NotFound:
            results[index] = None

    async with anyio.create_task_group() as group:
        for index, operation_id in enumerate(ids):
            group.start_soon(fetch, index, operation_id)
    return results


# --- read and cancel --------------------------------------------------------------------------------------


def _read_at_once(request: Request, found: OperationRecord) -> bool:
    """Answered from the record alone: no embedded copies to read, no valid ``?wait=`` left to wait."""
    if services(request).settings.embedded_artifacts != "off":
        return False
    try:
        wait = wait_param(request.query_params.get("wait"))
    except ValidationFailed:
        return False
    return not wait or found.finished


@signed(
    "operation.read",
    operation=True,
    audited={"expired": "denied", "operation_not_found": "denied"},
    at_once=_read_at_once,
)
async def get_operation(request: Request) -> Response:
    """The operation; with ``?wait=<seconds>`` a long poll (see ``wait_param`` and docs/api.md).

    The signature, grantee, grant and expiry checks (``@signed``) run before any waiting, and the access is
    recorded once, when the answer is ready. Waiting holds no thread: ``api_service.long_poll``.
    """
    svc = services(request)
    wait = wait_param(request.query_params.get("wait"))
    found = record(request)
    headers: dict[str, str] = {}
    if wait is not None:
        headers[WAIT_APPLIED] = str(wait)
        if wait and not found.finished:
            operation_id = found.id
            found = await svc.waits.wait(
                operation_id, found.status, lambda: current_record(request, operation_id), wait
            )
            if found.is_expired():  # it expired while the request waited
                raise Expired("this operation has expired")
    if svc.settings.embedded_artifacts == "off":  # the record alone: rendered once per version, no thread hop
        view = operation_view(found, svc.settings, svc.records)
    else:
        view = await blocking(operation_view, found, svc.settings, svc.records)
    return json_response(view.body, 200, {**view.headers, **headers})


WAIT_APPLIED = "X-Wait-Applied"  # answer header: the server honoured ``?wait=`` (an older one ignores it)
_WAIT_RE = re.compile(r"[0-9]{1,2}")


def wait_param(raw: str | None) -> int | None:
    """``?wait=``: whole seconds from 0 to ``MAX_WAIT`` in ASCII digits, or ``None`` when absent.

    The contract: a finished operation answers at once; otherwise the answer waits until the status differs from
    the one the operation had when the request arrived (the status in the answer is then the new one), or until
    ``wait`` seconds passed (then it is unchanged), whichever comes first. 0 does not wait.
    """
    if raw is None:
        return None
    if not _WAIT_RE.fullmatch(raw) or int(raw) > MAX_WAIT:
        raise ValidationFailed(f"wait must be a whole number of seconds from 0 to {MAX_WAIT}", code="wait_invalid")
    return int(raw)


@signed("operation.cancel", operation=True, result="ok", audited={"operation_finished": "denied"})
async def cancel_operation(request: Request) -> Response:
    """``shared.cancel.request_cancel``: pending -> cancelled, running -> flagged for the run, finished -> 409."""
    svc = services(request)
    cancelled = await blocking(request_cancel, svc.records, svc.sync_redis, record(request).id)
    if cancelled.finished and svc.quotas is not None:  # a pending operation ends here, not in a worker
        svc.quotas.finished(cancelled.grantee, cancelled.id)
    return json_response(dump_operation(operation_response(cancelled)), 202)


# --- access log -------------------------------------------------------------------------------------------


@signed("access_log.read", operation=True)
async def access_log(request: Request) -> Response:
    """One page of the operation's access log, oldest first; follow ``next_cursor`` (as ``?after=``) to the end.

    The chain is verified as the page is read (``audit_log.read_verified_page``): ``chain_valid`` covers this
    page's batches, their link to the batch before them and, on the last page, the head. A client that sees it
    true on every page from the first has verified the whole log. ``chain`` carries each batch's plaintext (the
    bytes its digest covers), the head and the anchor, so a client can recompute the chain itself instead of
    trusting ``chain_valid`` (the browser page does).
    """
    operation_id = record(request).id
    after, limit = _log_params(request)
    svc = services(request)
    anchor = await _log_anchor(request, operation_id)  # before the listing: it is written last
    page = await blocking(
        lambda: audit_log.read_verified_page(
            svc.records, operation_id, after=after, max_events=limit, max_bytes=MAX_LOG_PAGE_BYTES, anchor=anchor
        )
    )
    return json_response(access_log_body(page, anchor))


def access_log_body(page: audit_log.Page, anchor: audit_log.Head | None) -> dict[str, Any]:
    """The JSON of one access-log page (``AccessLogResponse``); tests/helpers/auditchain_vectors.py uses it too."""
    return {
        "events": [e.model_dump(mode="json") for e in page.events],
        "chain_valid": page.chain_valid,
        "problems": page.problems,
        "batches": page.batches,
        "next_cursor": None if page.next_after is None else str(page.next_after),
        "chain": {
            "batches": [
                {
                    "sequence": b.sequence,
                    "prev": b.prev,
                    "digest": b.digest,
                    "plaintext": base64.b64encode(b.plaintext).decode("ascii"),
                }
                for b in page.chain
            ],
            "head": _head_view(page.head),
            "anchor": _head_view(anchor),
        },
    }


def _head_view(head: audit_log.Head | None) -> dict[str, Any] | None:
    return None if head is None else {"sequence": head.sequence, "digest": head.digest}


async def _log_anchor(request: Request, operation_id: str) -> audit_log.Head | None:
    """The log's head as the worker recorded it in Redis, so a tail deleted in S3 shows in ``problems``."""
    try:
        raw = await services(request).redis.get(audit_log.anchor_key(operation_id))
    except RedisError as exc:
        raise Unavailable("the access log cannot be checked right now", code="redis_unavailable") from exc
    return audit_log.parse_anchor(raw)


def _log_params(request: Request) -> tuple[int, int]:
    query = request.query_params
    limit = page_limit(query.get("limit"), default=DEFAULT_LOG_PAGE, maximum=MAX_LOG_PAGE)
    raw_after = query.get("after")
    if raw_after is None:
        return 0, limit
    if not _LOG_CURSOR_RE.fullmatch(raw_after):
        raise ValidationFailed("after is not a cursor this server issued", code="cursor_invalid")
    return int(raw_after), limit
