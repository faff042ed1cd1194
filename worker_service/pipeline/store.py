"""Turn an agent's output files into encrypted, uploaded artifacts (the design's ``store_artifacts``).

Per file: a fresh 32-byte data key, Cobblestone-256 encryption bound to (operation, name) into a temp file
(constant memory, both SHA-256s computed on the way), an upload S3 verifies against the ciphertext SHA-256, and
the data key wrapped for the grantee's public key. This module only uploads: the caller writes the record once,
after every upload succeeded, which is what makes the artifacts visible (all or none).
"""

from __future__ import annotations

import codecs
import hashlib
import mimetypes
import os
import secrets
import stat
import tempfile
from pathlib import Path

import structlog

from shared import layout
from shared.crypto import cobblestone, keywrap
from shared.events import new_event, publish
from shared.models import Encryption, OperationRecord, StoredArtifact, WrappedKey, utcnow
from worker_service.agents.outputs import LimitExceeded, OutputFile, collect_outputs
from worker_service.agents.runner import Limits
from worker_service.services import Services

log = structlog.get_logger(__name__)

SNIFF_BYTES = 8192
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"


def detect_content_type(name: str, path: Path) -> str:
    """The type from the extension; without one, UTF-8 text without NULs is text/plain, anything else binary."""
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed and not encoding:
        if guessed.startswith("text/") or guessed in {"application/json", "application/xml"}:
            return f"{guessed}; charset=utf-8" if _looks_like_utf8(path) else guessed
        return guessed
    if guessed:  # e.g. .tar.gz: the encoding wins
        return "application/gzip" if encoding == "gzip" else BINARY_TYPE
    return TEXT_TYPE if _looks_like_utf8(path) else BINARY_TYPE


def _looks_like_utf8(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut multibyte tail is fine
    except UnicodeDecodeError:
        return False
    return True


def _open_regular(path: Path, expected_size: int) -> int:
    """Open without following symlinks and re-check the file is what ``collect_outputs`` saw."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != expected_size:
        os.close(fd)
        raise LimitExceeded(
            f"invalid artifact: {path.name!r} changed after the agent finished", code="artifact_changed"
        )
    return fd


def store_artifact(services: Services, record: OperationRecord, item: OutputFile, scratch: Path) -> StoredArtifact:
    """Encrypt, upload and wrap one file; the object exists under its final key but no record names it yet."""
    data_key = secrets.token_bytes(32)
    content_type = detect_content_type(item.name, item.path)
    key = layout.artifact_key(record.id, item.name)
    fd = _open_regular(item.path, item.size)
    with os.fdopen(fd, "rb") as src, tempfile.TemporaryFile(dir=scratch) as sealed:
        result = cobblestone.encrypt_file(data_key, cobblestone.artifact_context(record.id, item.name), src, sealed)
        sealed.seek(0)
        services.store.put_file(
            key, sealed, size=result.ciphertext_size, sha256_hex=result.ciphertext_sha256, content_type=BINARY_TYPE
        )
    embedded = _store_embedded(services, record, item, result.plaintext_sha256)
    wrapped = keywrap.wrap_data_key(
        record.encryption_public_key, record.id, item.name, data_key, result.plaintext_sha256
    )
    return StoredArtifact(
        name=item.name,
        size=result.plaintext_size,
        content_type=content_type,
        created_at=utcnow(),
        checksum=f"sha256:{result.plaintext_sha256}",
        ciphertext_checksum=f"sha256:{result.ciphertext_sha256}",
        ciphertext_size=result.ciphertext_size,
        encryption=Encryption(wrapped_key=WrappedKey.model_validate(wrapped)),
        embedded=embedded,
    )


def _store_embedded(services: Services, record: OperationRecord, item: OutputFile, sha256_hex: str) -> bool:
    """The legacy keyring-sealed copy (embedded-artifacts migration); small files only, never in "off" mode."""
    settings = services.settings
    if settings.embedded_artifacts == "off" or item.size > settings.embedded_max_size:
        return False
    plaintext = item.path.read_bytes()  # bounded by embedded_max_size
    if hashlib.sha256(plaintext).hexdigest() != sha256_hex:
        raise LimitExceeded(f"invalid artifact: {item.name!r} changed while it was stored", code="artifact_changed")
    services.records.put_sealed(layout.embedded_key(record.id, item.name), plaintext)
    return True


def store_artifacts(
    services: Services, record: OperationRecord, out_dir: Path, *, scratch: Path | None = None
) -> list[StoredArtifact]:
    """Upload every file in ``out_dir`` (after the limit checks) and return what the record should list.

    Raises ``LimitExceeded`` before uploading anything if ``out_dir`` breaks a limit, and lets storage errors
    (``StorageError``/``Unavailable``) propagate: objects already uploaded are unnamed, so invisible, and a
    re-run or the orphan sweep removes them.
    """
    files = collect_outputs(out_dir, Limits.from_settings(services.settings))
    keywrap.parse_public_key(record.encryption_public_key)  # a bad key fails before anything is uploaded
    scratch_dir = scratch or out_dir.parent
    stored = []
    for item in files:
        stored.append(store_artifact(services, record, item, scratch_dir))
        log.info("artifact.uploaded", operation_id=record.id, artifact=item.name, size=item.size)
    return stored


def unnamed_objects(services: Services, record: OperationRecord) -> list[str]:
    """Artifact and embedded objects under the operation that the record does not name (a dead run's uploads)."""
    named = {layout.artifact_key(record.id, a.name) for a in record.artifacts}
    named |= {layout.embedded_key(record.id, a.name) for a in record.artifacts if a.embedded}
    prefixes = (layout.artifacts_prefix(record.id), layout.embedded_prefix(record.id))
    return [info.key for prefix in prefixes for info in services.store.list(prefix) if info.key not in named]


def publish_stored(services: Services, record: OperationRecord) -> None:
    """Audit ``artifact.stored`` for each artifact the (now written) record names."""
    for artifact in record.artifacts:
        publish(
            services.redis,
            new_event(
                operation_id=record.id,
                actor=record.grantee,
                action="artifact.stored",
                artifact=artifact.name,
                result="ok",
            ),
        )
