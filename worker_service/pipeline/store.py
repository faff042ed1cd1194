"""Turn an agent's output files into encrypted, uploaded artifacts (the design's ``store_artifacts``).

Per file: one descriptor opened without following links (content sniffing, encryption and the embedded copy all
read it), a fresh 32-byte data key, Cobblestone-256 encryption bound to (operation, name) into a temp file
(constant memory, both SHA-256s computed on the way), an upload S3 verifies against the ciphertext SHA-256 under
this run's own key, and the data key wrapped for the grantee's public key. This module only uploads: the caller
writes the record once, after every upload succeeded, which is what makes the artifacts visible (all or none).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import mimetypes
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import structlog

from shared import layout
from shared.crypto import cobblestone, keywrap
from shared.events import new_event, publish
from shared.models import Encryption, OperationRecord, StoredArtifact, WrappedKey, utcnow
from worker_service.agents.outputs import OutputFile, changed, collect_outputs, open_output_fd
from worker_service.agents.runner import Limits
from worker_service.services import Services

log = structlog.get_logger(__name__)

SNIFF_BYTES = 8192
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"


def detect_content_type(name: str, head: bytes) -> str:
    """The type from the extension; without one, UTF-8 text without NULs is text/plain, anything else binary.

    ``head`` is the file's first ``SNIFF_BYTES`` (read from the already-open descriptor, never from the path).
    """
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed and not encoding:
        if guessed.startswith("text/") or guessed in {"application/json", "application/xml"}:
            return f"{guessed}; charset=utf-8" if _looks_like_utf8(head) else guessed
        return guessed
    if guessed:  # e.g. .tar.gz: the encoding wins
        return "application/gzip" if encoding == "gzip" else BINARY_TYPE
    return TEXT_TYPE if _looks_like_utf8(head) else BINARY_TYPE


def _looks_like_utf8(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut multibyte tail is fine
    except UnicodeDecodeError:
        return False
    return True


@contextmanager
def open_output(item: OutputFile) -> Iterator[BinaryIO]:
    """Open an output file once, as ``collect_outputs`` saw it, for every later read.

    A process the agent left behind may have swapped the file, or ``out/`` itself, since:
    ``outputs.open_output_fd`` opens it through a no-follow descriptor of the very ``out/`` the worker created,
    refuses links and FIFOs, and insists on the same regular file of the collected size. Callers never touch
    the path again.
    """
    with os.fdopen(open_output_fd(item), "rb") as handle:
        yield handle


class _Bounded(io.RawIOBase):
    """At most ``limit`` bytes of ``src``: a file still growing behind our back cannot make encryption endless."""

    def __init__(self, src: BinaryIO, limit: int) -> None:
        self._src, self._left = src, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        count = self._src.readinto(view) if view.nbytes else 0  # type: ignore[attr-defined]
        self._left -= count
        return count


def _check_unchanged(src: BinaryIO, item: OutputFile, plaintext_size: int) -> None:
    """The bytes encrypted were the whole file as collected: same size read, same size now, nothing beyond."""
    if plaintext_size != item.size or os.fstat(src.fileno()).st_size != item.size:
        raise changed(item)


def store_artifact(
    services: Services,
    record: OperationRecord,
    item: OutputFile,
    *,
    run_id: str,
    ensure_owner: Callable[[], None],
    scratch: Path,
) -> StoredArtifact:
    """Encrypt, upload and wrap one file under this run's keys; no record names the objects yet.

    ``ensure_owner`` runs right before each upload and raises if this run lost its lease, so a superseded run
    stops writing at once (its keys are its own, so what it already wrote can only be an unnamed leftover).
    """
    data_key = secrets.token_bytes(32)
    key = layout.artifact_key(record.id, item.name, run_id)
    with open_output(item) as src:
        content_type = detect_content_type(item.name, src.read(SNIFF_BYTES))
        src.seek(0)
        with tempfile.TemporaryFile(dir=scratch) as sealed:
            ctx = cobblestone.artifact_context(record.id, item.name)
            result = cobblestone.encrypt_file(data_key, ctx, cast(BinaryIO, _Bounded(src, item.size)), sealed)
            _check_unchanged(src, item, result.plaintext_size)
            sealed.seek(0)
            ensure_owner()
            services.store.put_file(
                key, sealed, size=result.ciphertext_size, sha256_hex=result.ciphertext_sha256, content_type=BINARY_TYPE
            )
        embedded = _store_embedded(services, record, item, src, run_id, result.plaintext_sha256, ensure_owner)
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
        run_id=run_id,
    )


def _store_embedded(
    services: Services,
    record: OperationRecord,
    item: OutputFile,
    src: BinaryIO,
    run_id: str,
    sha256_hex: str,
    ensure_owner: Callable[[], None],
) -> bool:
    """The legacy keyring-sealed copy (embedded-artifacts migration); small files only, never in "off" mode.

    Per run like the ciphertext: a stale run must not replace the copy the current record's plaintext matches.
    """
    settings = services.settings
    if settings.embedded_artifacts == "off" or item.size > settings.embedded_max_size:
        return False
    src.seek(0)
    plaintext = src.read(item.size + 1)  # bounded by embedded_max_size; one byte more reveals growth
    if len(plaintext) != item.size or hashlib.sha256(plaintext).hexdigest() != sha256_hex:
        raise changed(item)
    ensure_owner()
    services.records.put_sealed(layout.embedded_key(record.id, item.name, run_id), plaintext)
    return True


def store_artifacts(
    services: Services,
    record: OperationRecord,
    out_dir: Path,
    *,
    run_id: str,
    ensure_owner: Callable[[], None],
    scratch: Path | None = None,
) -> list[StoredArtifact]:
    """Upload every file in ``out_dir`` (after the limit checks) under run ``run_id``'s keys; return what the
    record should list.

    Raises ``LimitExceeded`` before uploading anything if ``out_dir`` breaks a limit (or when a file changed after
    the check), whatever ``ensure_owner`` raises once the run lost its lease, and lets storage errors
    (``StorageError``/``Unavailable``) propagate: objects already uploaded are unnamed, so invisible, and the
    orphan sweep removes them once the operation has ended.
    """
    files = collect_outputs(out_dir, Limits.from_settings(services.settings))
    keywrap.parse_public_key(record.encryption_public_key)  # a bad key fails before anything is uploaded
    scratch_dir = scratch or out_dir.parent
    stored = []
    for item in files:
        stored.append(
            store_artifact(services, record, item, run_id=run_id, ensure_owner=ensure_owner, scratch=scratch_dir)
        )
        log.info("artifact.uploaded", operation_id=record.id, artifact=item.name, size=item.size)
    return stored


def unnamed_objects(services: Services, record: OperationRecord) -> list[str]:
    """Artifact and embedded objects under the operation that the record does not name (a dead run's uploads)."""
    named = {key for artifact in record.artifacts for key in artifact.object_keys(record.id)}
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
