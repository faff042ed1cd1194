"""The design's shapes: what is stored (``OperationRecord``) and what the API answers (``GetOperationResponse``).

Stored and served shapes are separate on purpose: the record carries what only the server needs (grantee,
public key, input size), the response carries what the client needs (download URLs). Times are UTC and serialise
as RFC 3339 with a ``Z``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from shared import layout

T = TypeVar("T")
_ZERO = timedelta(0)
_DERIVED = "_derived"  # OperationRecord.derived's memo, in the instance dict

OperationStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ENCRYPTION_SCHEME: Literal["cobblestone-256"] = "cobblestone-256"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC to the second (``2026-12-06T20:55:27Z``); ``isoformat`` is C code, a third faster than
    ``strftime``, and this runs for every timestamp of every status and list answer."""
    if value.utcoffset() != _ZERO:  # stored times come back with pydantic's own UTC tzinfo, not datetime.UTC
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


Timestamp = Annotated[datetime, PlainSerializer(format_time, return_type=str, when_used="json")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WrappedKey(Model):
    """``@metamask/eth-sig-util`` ``encrypt`` output, version ``x25519-xsalsa20-poly1305``."""

    version: Literal["x25519-xsalsa20-poly1305"]
    nonce: str
    ephemPublicKey: str
    ciphertext: str


class Encryption(Model):
    scheme: Literal["cobblestone-256"] = ENCRYPTION_SCHEME
    wrapped_key: WrappedKey


class StoredArtifact(Model):
    """One artifact as the operation record holds it.

    ``run_id`` is the run that uploaded it; its objects live under that run's keys, so readers and deleters must
    take the keys from here (``object_key``), never rebuild them from the name alone. Records written before
    per-run keys have no ``run_id`` and fall back to the run-less keys.
    """

    name: str
    size: int = Field(ge=0)
    content_type: str
    created_at: Timestamp
    checksum: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="SHA-256 of the plaintext")
    ciphertext_checksum: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="SHA-256 of the stored object")
    ciphertext_size: int = Field(ge=0)
    encryption: Encryption
    embedded: bool = False  # a keyring-encrypted legacy copy exists (embedded-artifacts migration)
    run_id: str | None = Field(default=None, pattern=layout.RUN_ID_PATTERN)

    def object_key(self, operation_id: str) -> str:
        """Where the ciphertext is stored."""
        return layout.artifact_key(operation_id, self.name, self.run_id)

    def embedded_object_key(self, operation_id: str) -> str | None:
        """Where the embedded copy is stored, ``None`` when none was written."""
        return layout.embedded_key(operation_id, self.name, self.run_id) if self.embedded else None

    def object_keys(self, operation_id: str) -> list[str]:
        """Every object this artifact owns (what deleting it must remove)."""
        embedded = self.embedded_object_key(operation_id)
        return [self.object_key(operation_id), *([embedded] if embedded else [])]


class ArtifactMetadata(Model):
    name: str
    size: int
    content_type: str
    created_at: Timestamp
    download_url: str
    checksum: str
    ciphertext_checksum: str
    encryption: Encryption

    @classmethod
    def from_stored(cls, operation_id: str, artifact: StoredArtifact, api_prefix: str = "/api/v1") -> ArtifactMetadata:
        return cls(
            name=artifact.name,
            size=artifact.size,
            content_type=artifact.content_type,
            created_at=artifact.created_at,
            download_url=artifact_url(operation_id, artifact.name, api_prefix),
            checksum=artifact.checksum,
            ciphertext_checksum=artifact.ciphertext_checksum,
            encryption=artifact.encryption,
        )


class ArtifactCollection(Model):
    count: int
    total_size: int
    artifacts: list[ArtifactMetadata]

    @classmethod
    def build(cls, artifacts: list[ArtifactMetadata]) -> ArtifactCollection:
        return cls(count=len(artifacts), total_size=sum(a.size for a in artifacts), artifacts=artifacts)


class OperationResult(Model):
    status: Literal["ok", "error"]
    summary: str
    execution_time: float = Field(ge=0, description="seconds")
    logs: list[str] = Field(default_factory=list)


class OperationRecord(Model):
    """Everything strongroom stores about an operation; encrypted at rest with the server keyring."""

    schema_version: Literal[1] = 1
    id: str
    agent: str
    grantee: str = Field(pattern=r"^0x[0-9a-f]{40}$")
    encryption_public_key: str
    status: OperationStatus = "pending"
    created_at: Timestamp
    expires_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    result: OperationResult | None = None
    artifacts: list[StoredArtifact] = Field(default_factory=list)
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.expires_at

    def artifact(self, name: str) -> StoredArtifact | None:
        return next((a for a in self.artifacts if a.name == name), None)

    def evolve(self, **changes: Any) -> OperationRecord:
        """A validated copy with ``changes`` applied (records are immutable values)."""
        return OperationRecord.model_validate({**self.model_dump(), **changes})

    def derived(self, name: str, compute: Callable[[OperationRecord], T]) -> T:
        """``compute(self)``, once per record object: a record is immutable, so what is derived from it alone
        (the API's rendered answers) stays right for as long as the object lives. The API serves a cached record
        object until its version changes, so each answer is rendered once per version, not per request."""
        # Kept in the instance dict beside the fields: pydantic ignores it there (equality, dumps), unlike a
        # private attribute, which equality compares. Copies and pickles leave it behind (below).
        memo: dict[str, Any] = self.__dict__.setdefault(_DERIVED, {})
        try:
            value: T = memo[name]
        except KeyError:
            value = memo[name] = compute(self)
        return value

    def __copy__(self) -> OperationRecord:
        copied = super().__copy__()
        copied.__dict__.pop(_DERIVED, None)  # model_copy(update=...) changes fields: nothing derived may follow
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> OperationRecord:
        copied = super().__deepcopy__(memo)
        copied.__dict__.pop(_DERIVED, None)
        return copied

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k != _DERIVED}
        return state


class EmbeddedArtifact(Model):
    name: str
    content_type: str
    size: int
    content_base64: str


class GetOperationResponse(Model):
    id: str
    status: OperationStatus
    created_at: Timestamp
    expires_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    result: OperationResult | None
    artifacts: ArtifactCollection
    embedded_artifacts: list[EmbeddedArtifact] | None = None
    warnings: list[str] | None = None


class CreateOperationRequest(Model):
    agent: str = Field(min_length=1, max_length=48)
    input: dict[str, Any] = Field(default_factory=dict)
    encryption_public_key: str = Field(min_length=1, max_length=100)
    retention_days: int | None = Field(default=None, ge=1)


class CreateOperationResponse(Model):
    id: str
    status: OperationStatus
    created_at: Timestamp
    expires_at: Timestamp


AuditAction = Literal[
    "auth",
    "operation.create",
    "operation.read",
    "operation.list",
    "operation.cancel",
    "artifact.list",
    "artifact.url",
    "artifact.download",
    "artifact.delete",
    "artifact.stored",
    "artifact.deleted",
    "operation.started",
    "operation.finished",
    "operation.expired",
    "access_log.read",
    "access_log.gap",  # written by the worker: the log was found damaged when this batch was appended
    "key.rotated",
]


class AuditEvent(Model):
    """One access decision or change: who did what to which operation, when, and with what result."""

    id: str
    time: Timestamp
    operation_id: str | None = None
    actor: str | None = None
    action: AuditAction
    artifact: str | None = None
    result: Literal["allowed", "denied", "ok", "error"]
    reason: str | None = None
    request_id: str | None = None


def artifact_url(operation_id: str, name: str, api_prefix: str = "/api/v1") -> str:
    return f"{api_prefix}/operations/{operation_id}/artifacts/{quote(name, safe='')}"


def expiry(created_at: datetime, retention_days: int) -> datetime:
    return created_at + timedelta(days=retention_days)


# --- grants (shared.grants decides; these are the shapes) ---


class Quotas(Model):
    """Limits per grantee; ``None`` means unlimited."""

    concurrent_operations: int | None = Field(default=None, ge=0)
    operations_per_hour: int | None = Field(default=None, ge=0)
    stored_bytes: int | None = Field(default=None, ge=0)


class QuotaUsage(Model):
    concurrent_operations: int
    operations_last_hour: int
    stored_bytes: int


class GrantView(Model):
    """``GET /api/v1/grant``: what the signer may do here, and how much of each quota is used."""

    address: str
    source: str = Field(description="`open` or `static`")
    status: Literal["active", "expired", "none"]
    agents: list[str] = Field(description='agent names, or `["*"]` for all')
    expires_at: Timestamp | None
    max_retention_days: int | None
    quotas: Quotas
    usage: QuotaUsage | None = Field(default=None, description="null when no quota counter applies")
