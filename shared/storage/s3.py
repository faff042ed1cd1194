"""``ObjectStore`` on S3 (AWS, SeaweedFS, MinIO...) through one boto3 client built once per process.

Environment variables used (read by ``shared.settings.Settings.from_env``, never here):

    STRONGROOM_S3_ENDPOINT_URL          S3 endpoint; empty means AWS
    STRONGROOM_S3_PUBLIC_ENDPOINT_URL   host put into presigned URLs when clients reach S3 by another address
    STRONGROOM_S3_BUCKET                the bucket
    STRONGROOM_S3_ADDRESSING_STYLE      path | virtual | auto
    STRONGROOM_S3_SSE                   none | AES256 | aws:kms (sent on every write)
    STRONGROOM_S3_SSE_KMS_KEY_ID        KMS key for aws:kms
    AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                                        empty credentials fall back to boto3's default chain (IAM role, profile)

Every boto exception is translated at this boundary by ``translate_errors`` (the table ``_CODE_TABLE``), so code
above the storage layer only ever sees ``shared.errors``.

Integrity: every write carries a ``ChecksumSHA256`` the server verifies. Multipart uploads checksum each part; as
S3 has no full-object SHA-256 for multipart objects, the whole-object digest is computed locally in the same pass
that hashes the parts and compared with the caller's before the upload is completed; any failure aborts the
upload, so no partial object or pending upload remains.

Throughput: parts are hashed in order by the calling thread and sent ``max_concurrency`` at a time from a small
per-upload thread pool (``shared.storage.parts``), reading plain files with ``os.pread``; the client's connection
pool (``max_pool_connections``) is sized for several such uploads at once.
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, cast
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from shared.errors import Conflict, NotFound, StorageError, StrongroomError, Unavailable, ValidationFailed
from shared.logging import get_logger
from shared.storage.base import ObjectInfo, PendingUpload, PresignedUrl
from shared.storage.parts import (
    BufferBudget,
    PartSource,
    SentPart,
    SourceWindow,
    StreamReader,
    send_parts,
    send_stream,
)
from shared.storage.presign import CONTENT_TYPE, DISPOSITION, QueryPresigner, learn

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from shared.settings import Settings

log = get_logger(__name__)

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MiB
PART_SIZE = 8 * MiB
PART_CONCURRENCY = 4  # parts in flight per upload; each holds a pooled connection, not a buffered part
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller non-final parts (EntityTooSmall)
STREAM_BUFFER = 8 * PART_SIZE  # bytes all streamed uploads of one store may hold in memory at once
DELETE_BATCH = 1000  # DeleteObjects limit
READ_CHUNK = 64 * 1024
NO_CORS_ORIGIN = "https://no-cors.invalid"  # RFC 2606 name: matches no real origin

SSE = Literal["none", "AES256", "aws:kms"]

# --- boto error codes -> shared errors --------------------------------------------------------------------

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
_CHECKSUM = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken"})
_UNAVAILABLE = frozenset(
    {"SlowDown", "ServiceUnavailable", "503", "InternalError", "500", "RequestTimeout", "RequestTimeTooSkewed"}
)
# A conditional PUT (If-None-Match: *) found the key taken; 409 is AWS's answer to a concurrent conditional write.
_EXISTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_NOT_IMPLEMENTED = frozenset({"NotImplemented", "501"})
_CODE_TABLE: dict[frozenset[str], tuple[type[StrongroomError], str, str]] = {
    # codes: (exception, our code, message template; {op} and {key} are filled in)
    _NOT_FOUND: (NotFound, "not_found", "object {key} not found"),
    frozenset({"NoSuchBucket"}): (
        StorageError,
        "bucket_missing",
        "bucket does not exist (run `strongroom init` to create it) during {op}",
    ),
    _CHECKSUM: (StorageError, "checksum_mismatch", "S3 rejected {key}: checksum mismatch"),
    _DENIED: (StorageError, "access_denied", "S3 denied {op} on {key} (check credentials and bucket policy)"),
    frozenset({"InvalidRange", "416"}): (
        ValidationFailed,
        "range_not_satisfiable",
        "requested range is outside {key}",
    ),
    frozenset({"EntityTooSmall"}): (StorageError, "part_too_small", "multipart part too small for {key}"),
    _UNAVAILABLE: (Unavailable, "unavailable", "S3 is unavailable ({op})"),
}
_CONNECTION_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


def map_client_error(exc: ClientError, op: str, key: str = "") -> StrongroomError:
    """The shared error for one ``ClientError``; messages name the operation and key, never credentials."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    for codes, (kind, our_code, template) in _CODE_TABLE.items():
        if code in codes:
            return kind(template.format(op=op, key=key or "-"), code=our_code)
    if isinstance(status, int) and status >= 500:
        return Unavailable(f"S3 is unavailable ({op}: HTTP {status})")
    return StorageError(f"S3 {op} failed on {key or '-'} ({code or status})")


@contextmanager
def translate_errors(op: str, key: str = "") -> Iterator[None]:
    """Turn any boto/botocore exception raised inside into a ``shared.errors`` exception."""
    try:
        yield
    except ClientError as exc:
        raise map_client_error(exc, op, key) from None
    except _CONNECTION_ERRORS as exc:
        raise Unavailable(f"S3 endpoint unreachable ({op}: {type(exc).__name__})") from None
    except NoCredentialsError:
        raise StorageError("no S3 credentials configured", code="credentials_missing") from None
    except BotoCoreError as exc:
        raise StorageError(f"S3 {op} failed ({type(exc).__name__})") from None


# --- helpers ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # a pure function of the name; the same names are downloaded again and again
def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the exact name in RFC 8187 ``filename*`` (RFC 6266 section 4.3).

    Quotes, backslashes and control characters never reach the header: S3 echoes this value verbatim, so it must
    not be able to end the parameter or inject another header.
    """
    cleaned = "".join(ch for ch in filename if ch.isprintable())
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in cleaned).strip() or "download"
    encoded = quote(cleaned, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _same_checksum(reported: str, expected: str) -> bool:
    """Multipart checksums are ``<base64>-<parts>`` on AWS; some servers (moto) drop the ``-<parts>`` suffix."""
    reported_digest, _, reported_parts = reported.partition("-")
    expected_digest, _, expected_parts = expected.partition("-")
    parts_agree = not reported_parts or reported_parts == expected_parts
    return parts_agree and hmac.compare_digest(reported_digest, expected_digest)


def _sse_args(sse: SSE, kms_key_id: str | None) -> dict[str, str]:
    if sse == "none":
        return {}
    args: dict[str, str] = {"ServerSideEncryption": sse}
    if sse == "aws:kms" and kms_key_id:
        args["SSEKMSKeyId"] = kms_key_id
    return args


# --- the store --------------------------------------------------------------------------------------------


class S3ObjectStore:
    """``ObjectStore`` on S3. Thread-safe: boto3 clients are, and the store keeps no other mutable state."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        presign_client: S3Client | None = None,
        sse: SSE = "none",
        sse_kms_key_id: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        max_concurrency: int = PART_CONCURRENCY,
        stream_buffer: int = STREAM_BUFFER,
    ) -> None:
        if part_size < MIN_PART_SIZE or multipart_threshold < part_size:
            raise ValueError("part_size must be >= 5 MiB and multipart_threshold >= part_size")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.client = client
        self.bucket = bucket
        self.presign_client = presign_client or client
        self.presign_is_local = _fixed_credentials(self.presign_client)
        # Learned at the first presign (botocore presigns a probe once); None: botocore's path for every URL.
        self._presigner: QueryPresigner | Literal[False] | None = False
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.buffers = BufferBudget(stream_buffer)  # shared by every ``put_stream`` of this store
        self._sse = _sse_args(sse, sse_kms_key_id)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ObjectStore:
        """Build the client once (and a second, network-free one for presigning at the public endpoint)."""
        client = _make_client(settings, settings.s3_endpoint_url)
        presign = None
        if settings.s3_public_endpoint_url and settings.s3_public_endpoint_url != settings.s3_endpoint_url:
            presign = _make_client(settings, settings.s3_public_endpoint_url)
        return cls(
            client,
            settings.s3_bucket,
            presign_client=presign,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
        )

    # --- bucket ---------------------------------------------------------------------------------------

    def ensure_bucket(self, *, cors_origins: tuple[str, ...] = (), expire_after_days: int | None = None) -> None:
        """Create the bucket if missing and apply CORS and the lifecycle backstop rule. Idempotent."""
        self._create_bucket()
        with translate_errors("PutBucketCors"):
            self.client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration={"CORSRules": [_cors_rule(cors_origins)]})
        with translate_errors("PutBucketLifecycleConfiguration"):
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": _lifecycle_rules(expire_after_days)}
            )
        log.info("bucket configured", bucket=self.bucket, cors_origins=list(cors_origins))

    def _create_bucket(self) -> None:
        try:
            with translate_errors("HeadBucket"):
                self.client.head_bucket(Bucket=self.bucket)
            return
        except NotFound:
            pass  # HeadBucket has no body, so a missing bucket is a bare 404
        except StorageError as exc:
            if exc.code != "bucket_missing":
                raise
        region = self.client.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**args)
            log.info("bucket created", bucket=self.bucket)
        except ClientError as exc:
            # A concurrent `init` won the race: that is success. BucketAlreadyExists (someone else's) is not.
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise map_client_error(exc, "CreateBucket") from None
        except BotoCoreError:
            with translate_errors("CreateBucket"):
                raise

    def ping(self) -> None:
        """Raise ``Unavailable`` unless the bucket is reachable with our credentials."""
        try:
            with translate_errors("HeadBucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except StrongroomError as exc:
            raise Unavailable(f"S3 bucket not reachable: {exc.detail}") from None

    # --- writes ---------------------------------------------------------------------------------------

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream", if_absent: bool = False
    ) -> None:
        """Store a small object in one PUT, with a SHA-256 checksum the server verifies.

        ``if_absent``: never replace an existing object (S3 ``If-None-Match: *``); ``Conflict`` (``object_exists``)
        if ``key`` exists. On a server that does not support conditional writes this is a plain PUT.

        AWS S3, MinIO and SeaweedFS (3.97 and later) honour the condition. A server that refuses it as not
        implemented gets the plain PUT (logged); one that ignores the header silently cannot be told apart.
        """
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "ChecksumSHA256": _b64(hashlib.sha256(data).digest()),
            **self._sse,
        }
        if not if_absent:
            with translate_errors("PutObject", key):
                self.client.put_object(**args)
            return
        try:
            self.client.put_object(**args, IfNoneMatch="*")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _EXISTS:
                raise Conflict(f"object {key} already exists", code="object_exists") from None
            if code not in _NOT_IMPLEMENTED:
                raise map_client_error(exc, "PutObject", key) from None
            log.warning("conditional write unsupported; plain PUT", key=key)
            with translate_errors("PutObject", key):
                self.client.put_object(**args)
        except BotoCoreError:
            with translate_errors("PutObject", key):
                raise

    def put_file(
        self, key: str, src: BinaryIO, *, size: int, sha256_hex: str, content_type: str = "application/octet-stream"
    ) -> None:
        """Stream ``size`` bytes from ``src`` (at position 0) to ``key``; the server verifies ``sha256_hex``.

        Large files go multipart (each part checksummed); memory stays bounded by the part size.
        The object appears atomically when the upload completes; an aborted upload leaves nothing.

        Here up to ``max_concurrency`` parts are in flight, each streamed from ``src`` in small reads (never held
        whole); ``src`` must not be read or written by anyone else until this returns.
        """
        try:
            expected = bytes.fromhex(sha256_hex)
        except ValueError:
            raise ValidationFailed("sha256_hex is not hexadecimal", code="checksum_invalid") from None
        if size <= self.multipart_threshold:
            expected_b64 = self._put_single(key, src, size, expected, content_type)
        else:
            expected_b64 = self._put_multipart(key, src, size, expected, content_type)
        self._verify_stored(key, size, expected_b64)

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, size: int, content_type: str = "application/octet-stream"
    ) -> str:
        """Upload exactly ``size`` bytes produced by ``chunks`` to ``key`` in one pass; return their SHA-256 (hex).

        ``chunks`` (pieces of any sizes, e.g. an encrypting generator) is consumed once, in order, by the calling
        thread, and run to its end before the object is completed. Every byte is hashed as it goes by and never
        read again. Up to ``multipart_threshold`` the object is buffered for one checksummed PUT; above it, parts
        are sent as they are produced (``max_concurrency`` in flight) and dropped once sent. Memory: the buffers
        of all streamed uploads of this store together stay within ``stream_buffer`` bytes (``BufferBudget``).
        An exception from ``chunks``, a source shorter (``source_truncated``) or longer (``source_too_long``) than
        ``size``, or a failed request stores nothing and leaves no pending upload; the exception is re-raised.
        """
        reader = StreamReader(chunks, key)
        if size <= self.multipart_threshold:
            self.buffers.acquire(size)
            try:
                data = reader.read_exact(size)
                reader.expect_end()
                digest = hashlib.sha256(data).digest()
                with translate_errors("PutObject", key):
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=data,
                        ContentLength=size,
                        ContentType=content_type,
                        ChecksumSHA256=_b64(digest),
                        **self._sse,  # type: ignore[arg-type]
                    )
                del data
            finally:
                self.buffers.release(size)
            self._verify_stored(key, size, _b64(digest))
            return digest.hex()
        upload_id = self._create_upload(key, content_type)
        try:
            # ``send_stream`` returns (or raises) only once no part request is running: abort cannot race a part.
            send = functools.partial(self._upload_part, key, upload_id)
            parts, whole = send_stream(reader, size, self.part_size, self.max_concurrency, self.buffers, send)
            self._complete_upload(key, upload_id, parts)
        except BaseException:
            self._abort(key, upload_id)
            raise
        composite = hashlib.sha256(b"".join(p.sha256 for p in parts)).digest()
        self._verify_stored(key, size, f"{_b64(composite)}-{len(parts)}")
        return whole.hex()

    def _create_upload(self, key: str, content_type: str) -> str:
        with translate_errors("CreateMultipartUpload", key):
            return self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                **self._sse,  # type: ignore[arg-type]
            )["UploadId"]

    def _complete_upload(self, key: str, upload_id: str, parts: Sequence[SentPart]) -> None:
        listed: Any = [{"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": _b64(p.sha256)} for p in parts]
        with translate_errors("CompleteMultipartUpload", key):
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listed}
            )

    def _put_single(self, key: str, src: BinaryIO, size: int, expected: bytes, content_type: str) -> str:
        source = PartSource(src, key)
        # Hash locally too: some S3-compatible servers accept a wrong checksum without a word.
        if not hmac.compare_digest(source.digest(0, size), expected):
            raise StorageError(f"{key}: source does not match its SHA-256", code="checksum_mismatch")
        with translate_errors("PutObject", key):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=cast(IO[bytes], source.window(0, size)),
                ContentLength=size,
                ContentType=content_type,
                ChecksumSHA256=_b64(expected),
                **self._sse,  # type: ignore[arg-type]
            )
        return _b64(expected)

    def _put_multipart(self, key: str, src: BinaryIO, size: int, expected: bytes, content_type: str) -> str:
        upload_id = self._create_upload(key, content_type)
        try:
            # ``send_parts`` returns (or raises) only once no part request is running, so abort cannot race a part.
            send = functools.partial(self._upload_part, key, upload_id)
            parts, whole = send_parts(PartSource(src, key), size, self.part_size, self.max_concurrency, send)
            if not hmac.compare_digest(whole, expected):
                raise StorageError(f"{key}: source does not match its SHA-256", code="checksum_mismatch")
            self._complete_upload(key, upload_id, parts)
        except BaseException:
            self._abort(key, upload_id)
            raise
        composite = hashlib.sha256(b"".join(p.sha256 for p in parts)).digest()
        return f"{_b64(composite)}-{len(parts)}"

    def _upload_part(self, key: str, upload_id: str, number: int, body: SourceWindow | bytes, digest: bytes) -> str:
        """One ``UploadPart``, from a pool thread (boto3 clients are thread-safe); returns its ETag."""
        with translate_errors("UploadPart", key):
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=cast(IO[bytes], body),
                ContentLength=len(body),
                ChecksumSHA256=_b64(digest),
            )
        return response["ETag"]

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            with translate_errors("AbortMultipartUpload", key):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except StrongroomError as exc:
            # The orphan sweep (and, on AWS, the lifecycle rule) aborts it later; the original error is worth more.
            log.warning("multipart abort failed", key=key, error=exc.code)

    def _verify_stored(self, key: str, size: int, expected_b64: str) -> None:
        """Compare what the server reports with what we sent; servers that report no checksum are trusted on the
        per-request checksums they verified (SeaweedFS's GetObjectAttributes, for one, omits it)."""
        info = self.head(key)
        reported = info.checksum_sha256
        matches = info.size == size and (reported is None or _same_checksum(reported, expected_b64))
        if not matches:
            self.delete(key)
            raise StorageError(f"stored {key} does not match what was sent", code="checksum_mismatch")

    # --- reads ----------------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""
        return b"".join(self.open_range(key))

    def open_range(self, key: str, first: int | None = None, last: int | None = None) -> Iterator[bytes]:
        """Stream an object, or the inclusive byte range ``first..last`` of it, in chunks."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        byte_range = _range_header(first, last)
        if byte_range:
            args["Range"] = byte_range
        with translate_errors("GetObject", key):
            body = self.client.get_object(**args)["Body"]
        return self._stream(body, key)

    @staticmethod
    def _stream(body: Any, key: str) -> Iterator[bytes]:
        try:
            with translate_errors("GetObject", key):
                yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def head(self, key: str) -> ObjectInfo:
        """Size and checksum of an object; ``NotFound`` if absent."""
        with translate_errors("HeadObject", key):
            r = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        return ObjectInfo(
            key=key,
            size=r["ContentLength"],
            last_modified=r["LastModified"],
            etag=r.get("ETag", "").strip('"'),
            checksum_sha256=r.get("ChecksumSHA256") or None,
        )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in ascending key order, after ``start_after``, at most ``limit``."""
        if limit is not None and limit <= 0:
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            args["StartAfter"] = start_after
        page_size = min(limit or 1000, 1000)
        remaining = limit
        with translate_errors("ListObjectsV2", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(**args, PaginationConfig={"PageSize": page_size}):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"],
                        size=obj["Size"],
                        last_modified=obj["LastModified"],
                        etag=obj.get("ETag", "").strip('"'),
                    )
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        """The distinct "directories" directly under ``prefix``, ascending (one LIST request per 1000)."""
        with translate_errors("ListObjectsV2", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    yield common["Prefix"]

    # --- pending multipart uploads ---------------------------------------------------------------------

    def list_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Multipart uploads under ``prefix`` that were neither completed nor aborted."""
        with translate_errors("ListMultipartUploads", prefix):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    yield PendingUpload(upload["Key"], upload["UploadId"], upload["Initiated"])

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort a pending multipart upload and free its parts; an upload already gone is not an error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise map_client_error(exc, "AbortMultipartUpload", upload.key) from None
        except BotoCoreError:
            with translate_errors("AbortMultipartUpload", upload.key):
                raise

    # --- deletes --------------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error (idempotent)."""
        with suppress(NotFound), translate_errors("DeleteObject", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete objects in batches of up to 1000; idempotent.

        Raises one ``StorageError`` after trying every batch if any key could not be deleted, naming the first few.
        """
        failures: builtins.list[str] = []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            with translate_errors("DeleteObjects", batch[0]):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            failures.extend(
                f"{e.get('Key')} ({e.get('Code')})"
                for e in response.get("Errors", [])
                if e.get("Code") not in _NOT_FOUND
            )
        if failures:
            shown = ", ".join(failures[:5])
            raise StorageError(f"{len(failures)} of {len(keys)} objects not deleted: {shown}", code="delete_failed")

    # --- presigning -----------------------------------------------------------------------------------

    def presign_get(
        self, key: str, *, ttl: int, filename: str | None = None, content_type: str | None = None
    ) -> PresignedUrl:
        """A GET URL valid for ``ttl`` seconds; ``filename`` sets a safe ``Content-Disposition: attachment``.

        With fixed credentials the URL is built by ``shared.storage.presign`` (the same bytes botocore would
        produce, at a fraction of the CPU); otherwise, or if that could not reproduce botocore's URL, by botocore.
        """
        presigner = self._presigner
        if presigner is False:
            presigner = self._presigner = self._learn_presigner()
        disposition = None if filename is None else content_disposition(filename)
        if presigner is not None:
            query = []
            if disposition is not None:
                query.append((DISPOSITION, disposition))
            if content_type is not None:
                query.append((CONTENT_TYPE, content_type))
            url, signed_at = presigner.presign_get(key, ttl, query)
            return PresignedUrl(url=url, expires_at=datetime.fromtimestamp(signed_at + ttl, UTC))
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if disposition is not None:
            params["ResponseContentDisposition"] = disposition
        if content_type is not None:
            params["ResponseContentType"] = content_type
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
        with translate_errors("PresignGetObject", key):
            url = self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
        return PresignedUrl(url=url, expires_at=expires_at)

    def _learn_presigner(self) -> QueryPresigner | None:
        """The fast presigner if credentials are fixed keys and it reproduces botocore's URL for this bucket."""
        if not self.presign_is_local:
            return None
        credentials = self.presign_client._request_signer._credentials  # type: ignore[attr-defined]  # no public accessor
        try:
            presigner = learn(self.presign_client, self.bucket, credentials)
        except Exception as exc:  # anything unusual keeps botocore's path; the reason is logged, never a URL
            log.warning("presigning through botocore", reason=type(exc).__name__)
            return None
        if presigner is None:
            log.info("presigning through botocore", reason="URL shape not reproduced")
        return presigner


# --- configuration builders -------------------------------------------------------------------------------


def _fixed_credentials(client: S3Client) -> bool:
    """Whether presigning is pure CPU: fixed keys, not credentials botocore refreshes over the network (instance
    roles, web identity) when they near expiry. Unknown means no: the caller then keeps it off the event loop."""
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)  # no public accessor
    return isinstance(credentials, Credentials) and not isinstance(credentials, RefreshableCredentials)


def _make_client(settings: Settings, endpoint_url: str | None) -> S3Client:
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"mode": "standard", "total_max_attempts": 4},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
        # Non-AWS servers (SeaweedFS, MinIO) do not all speak the aws-chunked CRC trailers botocore now adds by
        # default; we send explicit ChecksumSHA256 values instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None,
        config=config,
    )
    return client


def _cors_rule(origins: tuple[str, ...]) -> Any:
    """Browsers may GET/HEAD (with Range) from the listed origins. With none, a rule naming an origin that cannot
    exist: some servers (SeaweedFS) treat a bucket with no rules as open to every origin."""
    return {
        "ID": "strongroom-download",
        "AllowedMethods": ["GET", "HEAD"],
        "AllowedOrigins": list(origins) or [NO_CORS_ORIGIN],
        "AllowedHeaders": ["Range", "If-Match", "If-None-Match"],
        "ExposeHeaders": ["Content-Length", "Content-Range", "Content-Disposition", "Content-Type", "ETag"],
        "MaxAgeSeconds": 3600,
    }


def _lifecycle_rules(expire_after_days: int | None) -> Any:
    rules: list[Any] = [
        {
            "ID": "strongroom-abort-incomplete-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    ]
    if expire_after_days is not None:
        rules.append(
            {
                "ID": "strongroom-expire-operations",
                "Filter": {"Prefix": "operations/"},
                "Status": "Enabled",
                "Expiration": {"Days": expire_after_days},
            }
        )
    return rules


def _range_header(first: int | None, last: int | None) -> str | None:
    """``None`` for the whole object (an empty object has no satisfiable range)."""
    if (first is not None and first < 0) or (last is not None and last < 0):
        raise ValidationFailed("range bounds must be non-negative", code="range_not_satisfiable")
    start = first or 0
    if last is None:
        return None if start == 0 else f"bytes={start}-"
    if last < start:
        raise ValidationFailed("range end before its start", code="range_not_satisfiable")
    return f"bytes={start}-{last}"
