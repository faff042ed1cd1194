"""The OpenAPI 3.1 document, built from the same pydantic models the service stores and serves.

Schema names are the design's (``GetOperationResponse``, ``OperationResult``, ``ArtifactCollection``,
``ArtifactMetadata``...), so independent clients can generate code against them. Response schemas use pydantic's
*serialization* mode: that is what goes on the wire (timestamps as strings). Every documented status code that
is an error carries ``application/problem+json``.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from api_service.endpoints.operations import CURSOR_PATTERN, LOG_CURSOR_PATTERN
from api_service.long_poll import MAX_WAIT
from shared.agents import AgentList, agent_names
from shared.models import (
    ArtifactCollection,
    AuditEvent,
    CreateOperationRequest,
    CreateOperationResponse,
    Encryption,
    GetOperationResponse,
    GrantView,
    OperationStatus,
)
from shared.settings import Settings

OPENAPI_PATH = "/api/v1/openapi.json"
OPERATION_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,47}_[a-z2-7]{26}$"
PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"  # base64 of exactly 32 bytes
REF = "#/components/schemas/{model}"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListOperationsResponse(_Doc):
    operations: list[GetOperationResponse]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class ArtifactUrlResponse(_Doc):
    url: str = Field(
        description="presigned S3 GET URL; in proxy mode this artifact's own API path "
        "(`/api/v1/operations/{id}/artifacts/{name}`), fetched with a signed GET"
    )
    expires_at: str | None = Field(description="when the presigned URL stops working; null in proxy mode")
    size: int = Field(description="plaintext size, bytes")
    content_type: str
    checksum: str
    ciphertext_checksum: str
    encryption: Encryption


class AccessLogHead(_Doc):
    """A log's newest batch as recorded: ``head.json`` in S3, or the anchor (the head kept in Redis)."""

    sequence: int = Field(ge=1)
    digest: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 hex of that batch's plaintext")


class AccessLogBatch(_Doc):
    """One batch of the page as stored: the bytes its digest covers, so a client can recompute the chain."""

    sequence: int = Field(ge=1, description="the batch's number (its S3 key); equals the `sequence` inside")
    prev: str = Field(
        pattern="^[0-9a-f]{64}$", description="the previous batch's digest as written inside (64 zeros for batch 1)"
    )
    digest: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 hex of the decoded `plaintext`")
    plaintext: str = Field(
        description="standard base64 of the batch's plaintext: the UTF-8 JSON "
        '`{"v":1,"sequence":n,"prev":"...","events":[...]}` the digest covers (docs/audit-log.md)'
    )


class AccessLogChain(_Doc):
    """What a client needs to verify the page's chain without trusting ``chain_valid``."""

    batches: list[AccessLogBatch] = Field(
        description="this page's batches, oldest first; a batch that does not open on the server is absent (a gap)"
    )
    head: AccessLogHead | None = Field(
        description="head.json as read before the batches were listed; null if missing or unreadable"
    )
    anchor: AccessLogHead | None = Field(
        description="the head kept outside S3 (Redis), read before head.json; null if Redis has none"
    )


class AccessLogResponse(_Doc):
    """One page of an access log; follow ``next_cursor`` (as ``?after=``) until it is null."""

    events: list[AuditEvent] = Field(description="this page's events, oldest first (whole batches)")
    chain_valid: bool = Field(
        description="this page's batches are contiguous, each chains to the batch before it (the first to the "
        "batch named by ?after=), and on the last page the head matches; true on every page = the whole log verifies"
    )
    problems: list[str] = Field(
        description="what failed verification on this page (empty when chain_valid): missing batches, a removed "
        "tail, a batch that records damage found when it was appended (an access_log.gap event)..."
    )
    batches: int = Field(description="batches on this page")
    next_cursor: str | None = Field(description="pass as ?after= for the next page; null at the end")
    chain: AccessLogChain = Field(
        description="the page's batches as stored (plaintext bytes, sequence, prev, digest) and the head, to "
        "recompute the chain on the client: the events decoded from these bytes are the page's events"
    )


class Problem(BaseModel):
    """RFC 9457 problem details plus the stable machine-readable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    checks: dict[str, dict[str, Any]]


_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    AgentList,
    GrantView,
    GetOperationResponse,
    ArtifactCollection,
    CreateOperationResponse,
    ListOperationsResponse,
    ArtifactUrlResponse,
    AccessLogResponse,
    Problem,
    HealthResponse,
    ReadyResponse,
)

_ERRORS: dict[str, str] = {
    "401": "Signature missing, malformed, expired, replayed or invalid",
    "403": "Valid signature, but not allowed: not the operation's grantee (`not_grantee`), no grant (`no_grant`), "
    "the agent is not in the grant (`agent_not_granted`), or the grant has ended (`grant_expired`) or was removed "
    "(`grant_revoked`); see docs/grants.md",
    "404": "Unknown operation or artifact (`operation_not_found`, `artifact_not_found`), or `expired`",
    "422": "Invalid request; `code` names the field",
    "429": "Too many requests (`rate_limited`, with Retry-After) or a grant's quota reached (`quota_exceeded`, "
    "naming the quota; Retry-After only for `operations_per_hour`)",
    "500": "Internal error",
    "503": "A dependency (Redis, S3, queue) is unavailable; nothing was let through",
    "409": "The operation has already finished (`operation_finished`)",
    "416": "The Range selects no byte of the object (proxy mode)",
}

_SIGNATURE_DOC = (
    "ERC-8128 signed request (RFC 9421 + RFC 9530 + EIP-191), Request-Bound and Non-Replayable: "
    '`Signature-Input: eth=("@method" "@authority" "@path" "@query" "content-digest");created=..;expires=..;'
    'nonce="..";keyid="erc8128:<chain>:<0xaddress>"` and `Signature: eth=:<base64 65 bytes>:`, with '
    "`Content-Digest` for the body. `@query` is required only with a query, `content-digest` only with a body. "
    "See docs/signing.md."
)


def _schemas() -> dict[str, Any]:
    entries: list[tuple[type[BaseModel], Any]] = [(m, "serialization") for m in _RESPONSE_MODELS]
    entries.append((CreateOperationRequest, "validation"))
    _, definitions = models_json_schema(entries, ref_template=REF)
    return dict(definitions.get("$defs", {}))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(name)}}}
    if headers:
        response["headers"] = headers
    return response


def _errors(*codes: str) -> dict[str, Any]:
    selected = codes or tuple(_ERRORS)
    responses: dict[str, Any] = {}
    for code in selected:
        responses[code] = {
            "description": _ERRORS.get(code, "Error"),
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
    if "429" in responses:
        responses["429"]["headers"] = {
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "seconds to wait; absent on a `quota_exceeded` that only an ending operation frees",
            }
        }
    return responses


def _header(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string"}, "description": description}


_SIGNED_ERRORS = ("401", "403", "404", "422", "429", "500", "503")
_OP_ID = {
    "name": "operation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": OPERATION_ID_PATTERN},
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "artifact name, percent-encoded",
}
_ARTIFACT_HEADERS = {
    "X-Artifact-Checksum": _header("`sha256:<hex>` of the plaintext"),
    "X-Artifact-Ciphertext-Checksum": _header("`sha256:<hex>` of the stored ciphertext"),
    "X-Artifact-Encryption": _header("always `cobblestone-256`"),
    "Cache-Control": _header("`no-store`"),
}
_DEPRECATION_HEADERS = {
    "Deprecation": _header("RFC 9745, only when STRONGROOM_EMBEDDED_ARTIFACTS=deprecated"),
    "Sunset": _header("RFC 8594, only in the deprecated phase"),
    "Link": _header('`<...>; rel="deprecation"`, only in the deprecated phase'),
}

_WAIT_DOC = (
    "Long poll: a finished operation answers at once; otherwise the answer is held until the operation's status "
    "differs from the one it had when the request arrived, or for this many seconds, whichever comes first (the "
    "answer is the operation as it is then, with the new status or the same one). 0 does not wait. The server may "
    "answer earlier without a change (it is shutting down): ask again. Signature, grantee check, rate limit and "
    "the access record are those of the plain GET."
)
_WAIT_HEADERS = {
    "X-Wait-Applied": {
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT},
        "description": "with ?wait= only: the wait the server applied (a server that ignores ?wait= omits it)",
    }
}


def _signed(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"erc8128": []}],
        "responses": {**responses, **_errors(*_SIGNED_ERRORS)},
        **extra,
    }


def _paths() -> dict[str, Any]:
    status_values: list[str] = list(OperationStatus.__args__)  # type: ignore[attr-defined]
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/api/v1/agents": {
            "get": _signed(
                "The agents this server runs: name, description, the JSON Schema of their input, and the limits",
                {"200": _json("AgentList", "The agents and the limits of a new operation")},
                operationId="listAgents",
            ),
        },
        "/api/v1/grant": {
            "get": _signed(
                "What the signer may do here (agents, expiry, quotas) and how much of each quota is used",
                {"200": _json("GrantView", "The signer's grant; status `none` without one")},
                operationId="getGrant",
            ),
        },
        "/api/v1/operations": {
            "post": _signed(
                "Create an operation; the signer becomes its grantee",
                {"202": _json("CreateOperationResponse", "Accepted", {"Location": _header("the operation URL")})},
                operationId="createOperation",
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateOperationRequest")}},
                },
            ),
            "get": _signed(
                "The signer's operations, newest first",
                {"200": _json("ListOperationsResponse", "A page of operations")},
                operationId="listOperations",
                parameters=[
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": CURSOR_PATTERN}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": status_values}},
                ],
            ),
        },
        "/api/v1/operations/{operation_id}": {
            "parameters": [_OP_ID],
            "get": _signed(
                "One operation (the design's GetOperationResponse); with ?wait= a long poll",
                {"200": _json("GetOperationResponse", "The operation", {**_DEPRECATION_HEADERS, **_WAIT_HEADERS})},
                operationId="getOperation",
                parameters=[
                    {
                        "name": "wait",
                        "in": "query",
                        "description": _WAIT_DOC,
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT},
                    }
                ],
            ),
        },
        "/api/v1/operations/{operation_id}/cancel": {
            "parameters": [_OP_ID],
            "post": _signed(
                "Cancel a pending or running operation",
                {
                    "202": _json("GetOperationResponse", "Cancelled, or cancellation requested"),
                    **_errors("409"),
                },
                operationId="cancelOperation",
            ),
        },
        "/api/v1/operations/{operation_id}/artifacts": {
            "parameters": [_OP_ID],
            "get": _signed(
                "The operation's artifacts",
                {"200": _json("ArtifactCollection", "The artifact collection")},
                operationId="listArtifacts",
            ),
        },
        "/api/v1/operations/{operation_id}/artifacts/{name}": {
            "parameters": [_OP_ID, _NAME],
            "get": _signed(
                "Download: 307 to a presigned URL, JSON with the URL, or (proxy mode) the ciphertext",
                {
                    "200": {
                        "description": "JSON (Accept: application/json; proxy mode too, recording no "
                        "download) or, in proxy mode, the ciphertext",
                        "headers": _ARTIFACT_HEADERS,
                        "content": {"application/json": {"schema": _ref("ArtifactUrlResponse")}, **binary},
                    },
                    "206": {"description": "A byte range of the ciphertext (proxy mode)", "content": binary},
                    "307": {
                        "description": "Redirect to a short-lived presigned S3 URL",
                        "headers": {"Location": _header("presigned URL"), **_ARTIFACT_HEADERS},
                    },
                    **_errors("416"),
                },
                operationId="getArtifact",
                parameters=[{"name": "Range", "in": "header", "schema": {"type": "string"}}],
            ),
            "delete": _signed("Delete an artifact", {"204": {"description": "Deleted"}}, operationId="deleteArtifact"),
        },
        "/api/v1/operations/{operation_id}/access-log": {
            "parameters": [_OP_ID],
            "get": _signed(
                "The operation's audit events, oldest first, one page at a time, and whether the hash chain verifies",
                {"200": _json("AccessLogResponse", "A page of the access log")},
                operationId="getAccessLog",
                parameters=[
                    {
                        "name": "after",
                        "in": "query",
                        "description": "next_cursor of the previous page; omit for the first page",
                        "schema": {"type": "string", "pattern": LOG_CURSOR_PATTERN},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "most events per page (a page is whole batches, at least one)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500},
                    },
                ],
            ),
        },
        "/healthz": {"get": _unsigned("Liveness", {"200": _json("HealthResponse", "Serving")}, "healthz")},
        "/readyz": {
            "get": _unsigned(
                "Readiness: Redis, S3 and a worker heartbeat",
                {"200": _json("ReadyResponse", "Ready"), "503": _json("ReadyResponse", "Not ready")},
                "readyz",
            )
        },
        "/metrics": {
            "get": _unsigned(
                "Prometheus metrics",
                {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                "metrics",
            )
        },
    }


def _unsigned(summary: str, responses: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return {"summary": summary, "operationId": operation_id, "security": [], "responses": responses}


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The whole document, as strict as this server: what it refuses with 422 is not schema-valid (the agents it
    offers as an enum, its retention maximum, the key and cursor formats), so a schema-driven client never sends
    it. ``settings`` defaults to the built-in configuration (the environment is not read)."""
    settings = settings or Settings.from_env({"REDIS_URL": "redis://unused"})  # only agents and retention are read
    return _document(tuple(sorted(agent_names(settings))), settings.artifact_retention_days)


@lru_cache(maxsize=8)
def _document(agents: tuple[str, ...], max_retention_days: int) -> dict[str, Any]:
    schemas = copy.deepcopy(_schemas())
    create = schemas["CreateOperationRequest"]["properties"]
    create["agent"]["enum"] = list(agents)
    create["agent"]["description"] = "one of the agents this server offers (GET /api/v1/agents)"
    create["encryption_public_key"]["pattern"] = PUBLIC_KEY_PATTERN
    create["encryption_public_key"]["description"] = "the grantee's X25519 public key, base64 of 32 bytes"
    for branch in create["retention_days"]["anyOf"]:
        if branch.get("type") == "integer":
            branch["maximum"] = max_retention_days
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "strongroom API",
            "version": "1.0.0",
            "description": "Signed access to encrypted agent artifacts. Errors are RFC 9457 problem+json.",
        },
        "servers": [{"url": "/"}],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "erc8128": {"type": "apiKey", "in": "header", "name": "Signature", "description": _SIGNATURE_DOC}
            },
        },
    }
