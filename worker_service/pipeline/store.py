"""Turn an agent's output files into encrypted, uploaded artifacts (the design's ``store_artifacts``).

Per file, in one pass over its bytes: one descriptor opened without following links is read once; each piece
feeds the plaintext SHA-256 (and, for small files in the legacy embedded modes, the embedded copy) and
Cobblestone-256 encryption under a fresh 32-byte data key bound to (operation, name); the sealed bytes go
straight to the store's ``put_stream``, which hashes them for the checksums S3 verifies and uploads them as they
are produced (multipart above a threshold, memory bounded by the part size: no temp file, nothing read twice).
The data key is then wrapped for the grantee's public key.

The files of one operation upload concurrently (``STORE_CONCURRENCY`` at a time). The first failure cancels the
rest (a cancelled upload stops at its next piece and its multipart upload is aborted) and the objects this run
already completed are deleted; this module only uploads: the caller writes the record once, after every upload
succeeded, which is what makes the artifacts visible (all or none).
"""

from __future__ import annotations

import codecs
import hashlib
import mimetypes
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

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


READ_SIZE = 1024 * 1024  # plaintext read per piece (Cobblestone seals it as 64 chunks)
STORE_CONCURRENCY = 8  # artifacts of one operation uploading at once (each may have parts in flight too)


class StoreCancelled(Exception):
    """Another artifact of the same operation failed: this one stops (never raised out of ``store_artifacts``)."""


def _check_unchanged(src: BinaryIO, item: OutputFile, plaintext_size: int) -> None:
    """The bytes encrypted were the whole file as collected: same size read, same size now, nothing beyond."""
    if plaintext_size != item.size or os.fstat(src.fileno()).st_size != item.size:
        raise changed(item)


class _Plaintext:
    """One read of the file as collected: pieces for encryption, hashed on the way, kept when an embedded copy
    needs them (small files only). At most ``item.size`` bytes are read, so a file still growing behind our back
    cannot make encryption endless; the size check runs when the last piece was read, before the final chunk is
    sealed, so a changed file never completes an upload."""

    def __init__(self, src: BinaryIO, item: OutputFile, *, keep: bool, cancelled: threading.Event | None) -> None:
        self.src, self.item, self.cancelled = src, item, cancelled
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.kept: list[bytes] | None = [] if keep else None

    def pieces(self) -> Iterator[bytes]:
        while self.size < self.item.size:
            if self.cancelled is not None and self.cancelled.is_set():
                raise StoreCancelled()
            piece = self.src.read(min(READ_SIZE, self.item.size - self.size))
            if not piece:
                break
            self.sha256.update(piece)
            self.size += len(piece)
            if self.kept is not None:
                self.kept.append(piece)
            yield piece
        _check_unchanged(self.src, self.item, self.size)


def _embeds(services: Services, item: OutputFile) -> bool:
    """The legacy keyring-sealed copy (embedded-artifacts migration): small files only, never in "off" mode."""
    settings = services.settings
    return settings.embedded_artifacts != "off" and item.size <= settings.embedded_max_size


def store_artifact(
    services: Services,
    record: OperationRecord,
    item: OutputFile,
    *,
    run_id: str,
    ensure_owner: Callable[[], None],
    cancelled: threading.Event | None = None,
    written: list[str] | None = None,
) -> StoredArtifact:
    """Encrypt, upload and wrap one file under this run's keys, in one pass; no record names the objects yet.

    ``ensure_owner`` runs right before each upload and raises if this run lost its lease, so a superseded run
    stops writing at once (its keys are its own, so what it already wrote can only be an unnamed leftover).
    ``cancelled`` stops the upload between pieces (``StoreCancelled``); the key of each object completed is
    appended to ``written``.
    """
    data_key = secrets.token_bytes(32)
    key = layout.artifact_key(record.id, item.name, run_id)
    with open_output(item) as src:
        content_type = detect_content_type(item.name, src.read(SNIFF_BYTES))
        src.seek(0)
        plaintext = _Plaintext(src, item, keep=_embeds(services, item), cancelled=cancelled)
        ctx = cobblestone.artifact_context(record.id, item.name)
        sealed = cobblestone.encrypt_stream(data_key, ctx, plaintext.pieces())
        ciphertext_size = cobblestone.ciphertext_size(item.size)
        ensure_owner()
        ciphertext_sha256 = services.store.put_stream(key, sealed, size=ciphertext_size, content_type=BINARY_TYPE)
        if written is not None:
            written.append(key)
    plaintext_sha256 = plaintext.sha256.hexdigest()
    embedded = plaintext.kept is not None
    if plaintext.kept is not None:
        # Per run like the ciphertext: a stale run must not replace the copy the current record's plaintext matches.
        embedded_key = layout.embedded_key(record.id, item.name, run_id)
        ensure_owner()
        services.records.put_sealed(embedded_key, b"".join(plaintext.kept))
        if written is not None:
            written.append(embedded_key)
    wrapped = keywrap.wrap_data_key(record.encryption_public_key, record.id, item.name, data_key, plaintext_sha256)
    return StoredArtifact(
        name=item.name,
        size=plaintext.size,
        content_type=content_type,
        created_at=utcnow(),
        checksum=f"sha256:{plaintext_sha256}",
        ciphertext_checksum=f"sha256:{ciphertext_sha256}",
        ciphertext_size=ciphertext_size,
        encryption=Encryption(wrapped_key=WrappedKey.model_validate(wrapped)),
        embedded=embedded,
        run_id=run_id,
    )


def store_artifacts(
    services: Services,
    record: OperationRecord,
    out_dir: Path,
    *,
    run_id: str,
    ensure_owner: Callable[[], None],
) -> list[StoredArtifact]:
    """Upload every file in ``out_dir`` (after the limit checks) under run ``run_id``'s keys, ``STORE_CONCURRENCY``
    at a time; return what the record should list, in ``collect_outputs`` order.

    Raises ``LimitExceeded`` before uploading anything if ``out_dir`` breaks a limit (or when a file changed after
    the check), whatever ``ensure_owner`` raises once the run lost its lease, and lets storage errors
    (``StorageError``/``Unavailable``) propagate. The first failure is the one raised: it cancels the uploads
    still running (their multipart uploads are aborted), starts no more, and deletes what this run already
    stored (best effort: anything left is unnamed, so invisible, and the orphan sweep removes it once the
    operation has ended).
    """
    files = collect_outputs(out_dir, Limits.from_settings(services.settings))
    keywrap.parse_public_key(record.encryption_public_key)  # a bad key fails before anything is uploaded
    cancelled = threading.Event()
    written: list[str] = []
    failures: list[BaseException] = []

    def one(item: OutputFile) -> StoredArtifact | None:
        if cancelled.is_set():
            return None
        try:
            artifact = store_artifact(
                services,
                record,
                item,
                run_id=run_id,
                ensure_owner=ensure_owner,
                cancelled=cancelled,
                written=written,
            )
        except StoreCancelled:
            return None
        except BaseException as exc:
            failures.append(exc)  # list.append is atomic: the first failure stays first
            cancelled.set()
            return None
        log.info("artifact.uploaded", operation_id=record.id, artifact=item.name, size=item.size)
        return artifact

    results: list[StoredArtifact | None] = []
    interrupted: BaseException | None = None
    pool = ThreadPoolExecutor(max(1, min(STORE_CONCURRENCY, len(files))), thread_name_prefix="strongroom-store")
    try:
        results = list(pool.map(one, files))
    except BaseException as exc:  # this thread was interrupted while it waited (a task time limit, a signal)
        interrupted = exc
        cancelled.set()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # what is still running stops at its next piece
    if interrupted is not None or failures:
        _discard(services, record, written)
        raise interrupted or failures[0]
    return [artifact for artifact in results if artifact is not None]  # none is None without a failure


def _discard(services: Services, record: OperationRecord, keys: list[str]) -> None:
    """Delete what a failed store completed (this run's own keys: no other run and no record names them)."""
    if not keys:
        return
    try:
        services.store.delete_many(sorted(keys))
    except Exception as exc:  # the original failure is worth more; the orphan sweep finishes the job
        log.warning("artifact.discard_failed", operation_id=record.id, count=len(keys), error=type(exc).__name__)


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
