"""The shared ObjectStore contract against S3ObjectStore on moto (a real HTTP server in a thread), plus the S3
adapter's own behaviour: client configuration, SSE on every write, bucket rules, the error table.

moto checks no signatures, expiry or checksums (see INFRA.md): those properties are proven against SeaweedFS in
tests/integration/test_storage_s3.py, never here.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import threading
from base64 import b64encode
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from moto.server import ThreadedMotoServer

from shared.errors import NotFound, StorageError, Unavailable, ValidationFailed
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.storage.s3 import MiB, S3ObjectStore, content_disposition, map_client_error, translate_errors
from tests.helpers.ports import free_port
from tests.unit.storage.contract import ObjectStoreContract, sha256_hex

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    os.environ.setdefault("MOTO_DISABLE_GLOBAL_CORS", "true")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def moto_settings(url: str, **env: str) -> Settings:
    return Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "STRONGROOM_S3_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "STRONGROOM_S3_BUCKET": f"b-{secrets.token_hex(5)}",
            **env,
        }
    )


def small_parts(store: S3ObjectStore, **kwargs: Any) -> S3ObjectStore:
    """The same client with S3's smallest part size, so 11 MiB really goes multipart (5 + 5 + 1)."""
    return S3ObjectStore(store.client, store.bucket, multipart_threshold=5 * MiB, part_size=5 * MiB, **kwargs)


@pytest.fixture(scope="module")
def moto_store(moto_url: str) -> S3ObjectStore:
    store = S3ObjectStore.from_settings(moto_settings(moto_url))
    store.ensure_bucket()
    return small_parts(store)


def own_client_store(moto_url: str, bucket: str, **kwargs: Any) -> S3ObjectStore:
    """A store on ``bucket`` with a client of its own, so event hooks a test registers touch no other test."""
    return small_parts(S3ObjectStore.from_settings(moto_settings(moto_url, STRONGROOM_S3_BUCKET=bucket)), **kwargs)


def part_number(request: Any) -> int:
    return int(parse_qs(urlsplit(request.url).query)["partNumber"][0])


def pending_uploads(store: S3ObjectStore, prefix: str) -> list[Any]:
    return store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix).get("Uploads", [])


class TestMotoContract(ObjectStoreContract):
    reports_checksum = False  # moto stores ChecksumSHA256 but does not return it on HEAD

    @pytest.fixture
    def store(self, moto_store: S3ObjectStore) -> S3ObjectStore:
        return moto_store

    @pytest.fixture
    def prefix(self) -> str:
        return f"t-{secrets.token_hex(4)}/"

    @pytest.fixture
    def missing_bucket_store(self, moto_url: str) -> S3ObjectStore:
        return S3ObjectStore.from_settings(moto_settings(moto_url))

    def assert_no_pending_uploads(self, store: Any, prefix: str) -> None:
        assert pending_uploads(store, prefix) == []


# --- the adapter's own behaviour ---------------------------------------------------------------------------


def test_multipart_really_splits_into_parts(moto_store: S3ObjectStore, tmp_path: Any) -> None:
    data = os.urandom(11 * MiB)
    moto_store.put_file("mp/obj", io.BytesIO(data), size=len(data), sha256_hex=sha256_hex(data))
    info = moto_store.head("mp/obj")
    assert info.etag.endswith("-3")
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    composite = b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()).decode()
    assert info.checksum_sha256 in (composite, f"{composite}-3")  # AWS appends the part count, moto does not


def test_parts_travel_concurrently_and_never_beyond_the_limit(moto_url: str, moto_store: S3ObjectStore) -> None:
    store = own_client_store(moto_url, moto_store.bucket, max_concurrency=2)
    lock, calls = threading.Lock(), {"active": 0, "most": 0}
    together = threading.Barrier(2, timeout=10)  # parts 1 and 2 pass only if both are on the wire at once

    def before_call(**_: Any) -> None:
        with lock:
            calls["active"] += 1
            calls["most"] = max(calls["most"], calls["active"])

    def after_call(**_: Any) -> None:
        with lock:
            calls["active"] -= 1

    def before_send(request: Any, **_: Any) -> None:
        if part_number(request) <= 2:
            together.wait()

    events = store.client.meta.events
    events.register("before-call.s3.UploadPart", before_call)
    events.register("after-call.s3.UploadPart", after_call)
    events.register("before-send.s3.UploadPart", before_send)
    data = os.urandom(21 * MiB)  # five 5 MiB parts
    store.put_file("conc/obj", io.BytesIO(data), size=len(data), sha256_hex=sha256_hex(data))
    assert calls["most"] == 2
    assert store.head("conc/obj").etag.endswith("-5")
    assert store.get_bytes("conc/obj") == data


def test_a_failing_part_aborts_the_whole_upload(moto_url: str, moto_store: S3ObjectStore) -> None:
    store = own_client_store(moto_url, moto_store.bucket, max_concurrency=3)
    prefix = f"t-{secrets.token_hex(4)}/"
    key = prefix + "obj"
    store.put_bytes(key, b"previous version")
    refused: list[int] = []

    class Body:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield b"<Error><Code>InvalidArgument</Code><Message>injected</Message></Error>"

    def before_send(request: Any, **_: Any) -> Any:  # a response returned here is used instead of sending
        if part_number(request) != 3:
            return None
        refused.append(3)
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/xml"
        return AWSResponse(request.url, 400, headers, Body())

    store.client.meta.events.register("before-send.s3.UploadPart", before_send)
    data = os.urandom(26 * MiB)  # six parts
    with pytest.raises(StorageError) as exc:
        store.put_file(key, io.BytesIO(data), size=len(data), sha256_hex=sha256_hex(data))
    assert refused == [3]
    assert "InvalidArgument" in exc.value.detail
    assert store.get_bytes(key) == b"previous version"
    assert pending_uploads(store, prefix) == []


def test_max_concurrency_must_be_positive(moto_store: S3ObjectStore) -> None:
    with pytest.raises(ValueError):
        S3ObjectStore(moto_store.client, moto_store.bucket, max_concurrency=0)


@pytest.mark.parametrize(("sse", "kms"), [("AES256", ""), ("aws:kms", "alias/strongroom")])
def test_sse_is_requested_on_every_write(moto_url: str, sse: str, kms: str) -> None:
    settings = moto_settings(moto_url, STRONGROOM_S3_SSE=sse, STRONGROOM_S3_SSE_KMS_KEY_ID=kms)
    base = S3ObjectStore.from_settings(settings)
    base.ensure_bucket()
    store = small_parts(base, sse=settings.s3_sse, sse_kms_key_id=settings.s3_sse_kms_key_id)
    store.put_bytes("a", b"small")
    data = os.urandom(6 * MiB)
    store.put_file("b", io.BytesIO(data[:100]), size=100, sha256_hex=sha256_hex(data[:100]))
    store.put_file("c", io.BytesIO(data), size=len(data), sha256_hex=sha256_hex(data))
    for key in ("a", "b", "c"):
        head = store.client.head_object(Bucket=store.bucket, Key=key)
        assert head["ServerSideEncryption"] == sse
        if kms:
            assert kms in head["SSEKMSKeyId"]


def test_without_sse_nothing_is_requested(moto_store: S3ObjectStore) -> None:
    moto_store.put_bytes("plain", b"x")
    head = moto_store.client.head_object(Bucket=moto_store.bucket, Key="plain")
    assert head.get("ServerSideEncryption") in (None, "AES256")  # AWS now defaults to SSE-S3 on its own
    assert "SSEKMSKeyId" not in head


def test_ensure_bucket_applies_cors_and_lifecycle(moto_url: str) -> None:
    store = S3ObjectStore.from_settings(moto_settings(moto_url))
    store.ensure_bucket(cors_origins=("https://app.example", "http://127.0.0.1:8080"), expire_after_days=9)
    (rule,) = store.client.get_bucket_cors(Bucket=store.bucket)["CORSRules"]
    assert rule["AllowedOrigins"] == ["https://app.example", "http://127.0.0.1:8080"]
    assert sorted(rule["AllowedMethods"]) == ["GET", "HEAD"]
    assert "Range" in rule["AllowedHeaders"]
    assert {"Content-Length", "Content-Range", "ETag"} <= set(rule["ExposeHeaders"])
    rules = {r["ID"]: r for r in store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]}
    expire = rules["strongroom-expire-operations"]
    assert expire["Filter"]["Prefix"] == "operations/" and expire["Expiration"]["Days"] == 9
    assert rules["strongroom-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1

    store.ensure_bucket()  # reconfiguring: no origins means a rule no browser origin matches, no expiry rule
    (rule,) = store.client.get_bucket_cors(Bucket=store.bucket)["CORSRules"]
    assert rule["AllowedOrigins"] == ["https://no-cors.invalid"]
    ids = [r["ID"] for r in store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]]
    assert ids == ["strongroom-abort-incomplete-uploads"]


def test_presigned_url_uses_the_public_endpoint(moto_url: str) -> None:
    settings = moto_settings(moto_url, STRONGROOM_S3_PUBLIC_ENDPOINT_URL="https://files.example.com")
    store = S3ObjectStore.from_settings(settings)
    assert store.presign_client is not store.client
    url = store.presign_get("operations/x/a.enc", ttl=60).url
    assert url.startswith(f"https://files.example.com/{store.bucket}/operations/x/a.enc?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url


def test_presigned_url_serves_bytes_range_and_headers(moto_store: S3ObjectStore) -> None:
    moto_store.put_bytes("dl/report.enc", b"0123456789")
    url = moto_store.presign_get("dl/report.enc", ttl=60, filename="Résumé.md", content_type="text/markdown").url
    full = httpx.get(url)
    assert full.status_code == 200 and full.content == b"0123456789"
    assert full.headers["content-type"] == "text/markdown"
    assert full.headers["content-disposition"] == content_disposition("Résumé.md")
    part = httpx.get(url, headers={"Range": "bytes=2-4"})
    assert part.status_code == 206 and part.content == b"234"


def test_satisfies_the_protocol(moto_url: str) -> None:
    store: ObjectStore = S3ObjectStore.from_settings(moto_settings(moto_url))  # mypy checks the signatures
    assert store.bucket.startswith("b-")


def test_client_configuration(moto_url: str) -> None:
    store = S3ObjectStore.from_settings(moto_settings(moto_url, STRONGROOM_S3_ADDRESSING_STYLE="virtual"))
    config: Any = store.client.meta.config
    assert config.signature_version == "s3v4"
    assert config.s3 == {"addressing_style": "virtual"}
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert config.max_pool_connections == 32
    assert config.request_checksum_calculation == "when_required"
    assert store.presign_client is store.client


# --- content disposition ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.md", "attachment; filename=\"report.md\"; filename*=UTF-8''report.md"),
        ("a b.txt", "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"),
        ('x"; y=z', "attachment; filename=\"x_; y=z\"; filename*=UTF-8''x%22%3B%20y%3Dz"),
        (
            "evil\r\nSet-Cookie: a=b",
            "attachment; filename=\"evilSet-Cookie: a=b\"; filename*=UTF-8''evilSet-Cookie%3A%20a%3Db",
        ),
        ("日本.pdf", "attachment; filename=\"__.pdf\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.pdf"),
        ("50%\\off", "attachment; filename=\"50__off\"; filename*=UTF-8''50%25%5Coff"),
        ("\x00\x1f", "attachment; filename=\"download\"; filename*=UTF-8''"),
    ],
)
def test_content_disposition_is_safe(name: str, expected: str) -> None:
    value = content_disposition(name)
    assert value == expected
    assert value.isascii() and value.isprintable()
    assert value.count('"') == 2


# --- the error table ----------------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")


@pytest.mark.parametrize(
    ("code", "status", "kind", "our_code"),
    [
        ("NoSuchKey", 404, NotFound, "not_found"),
        ("404", 404, NotFound, "not_found"),
        ("NoSuchBucket", 404, StorageError, "bucket_missing"),
        ("BadDigest", 400, StorageError, "checksum_mismatch"),
        ("InvalidDigest", 400, StorageError, "checksum_mismatch"),
        ("XAmzContentSHA256Mismatch", 400, StorageError, "checksum_mismatch"),
        ("AccessDenied", 403, StorageError, "access_denied"),
        ("SignatureDoesNotMatch", 403, StorageError, "access_denied"),
        ("InvalidRange", 416, ValidationFailed, "range_not_satisfiable"),
        ("SlowDown", 503, Unavailable, "unavailable"),
        ("WeirdNewError", 502, Unavailable, "unavailable"),
        ("WeirdNewError", 400, StorageError, "storage_error"),
    ],
)
def test_error_table(code: str, status: int, kind: type, our_code: str) -> None:
    error = map_client_error(client_error(code, status), "GetObject", "operations/x/a.enc")
    assert type(error) is kind and error.code == our_code


def test_translate_errors_never_lets_boto_through() -> None:
    with pytest.raises(Unavailable), translate_errors("GetObject", "k"):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    with pytest.raises(Unavailable), translate_errors("GetObject", "k"):
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1")
    with pytest.raises(StorageError) as exc, translate_errors("PutObject", "k"):
        raise client_error("AccessDenied", 403)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_unreachable_endpoint_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = S3ObjectStore(client, "b")
    with pytest.raises(Unavailable):
        store.ping()
    with pytest.raises(Unavailable):
        store.get_bytes("k")
    with pytest.raises(Unavailable):
        list(store.list("p/"))


def test_presigning_runs_on_the_event_loop_only_with_fixed_keys(moto_url: str) -> None:
    """Refreshable credentials (instance roles, web identity) may fetch keys over the network while presigning."""
    from botocore.credentials import RefreshableCredentials
    from botocore.session import get_session

    assert S3ObjectStore.from_settings(moto_settings(moto_url)).presign_is_local

    def fetch() -> dict[str, str]:
        return {"access_key": "a", "secret_key": "b", "token": "c", "expiry_time": "2099-01-01T00:00:00Z"}

    session = get_session()
    session._credentials = RefreshableCredentials.create_from_metadata(fetch(), fetch, "test")
    refreshing = session.create_client("s3", endpoint_url=moto_url, region_name="us-east-1")
    assert not S3ObjectStore(refreshing, "bucket").presign_is_local


def test_streamed_parts_stay_within_the_buffer_budget(moto_url: str, moto_store: S3ObjectStore) -> None:
    """A streamed upload holds a part in memory until it is sent; the store's budget caps all of them together."""
    store = own_client_store(moto_url, moto_store.bucket, max_concurrency=4, stream_buffer=10 * MiB)
    data = os.urandom(26 * MiB)  # six parts, at most two held at once
    pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    assert store.put_stream("budget/obj", pieces, size=len(data)) == sha256_hex(data)
    assert 5 * MiB <= store.buffers.peak <= 10 * MiB
    assert store.buffers.used == 0
    assert store.head("budget/obj").etag.endswith("-6")
    assert store.get_bytes("budget/obj") == data


def test_a_failing_streamed_part_aborts_the_upload(moto_url: str, moto_store: S3ObjectStore) -> None:
    store = own_client_store(moto_url, moto_store.bucket, max_concurrency=3)
    prefix = f"t-{secrets.token_hex(4)}/"
    key = prefix + "obj"
    store.put_bytes(key, b"previous version")
    produced: list[int] = []

    class Body:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield b"<Error><Code>InvalidArgument</Code><Message>injected</Message></Error>"

    def before_send(request: Any, **_: Any) -> Any:  # a response returned here is used instead of sending
        if part_number(request) != 2:
            return None
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/xml"
        return AWSResponse(request.url, 400, headers, Body())

    def pieces() -> Iterator[bytes]:
        for _ in range(26):  # 26 MiB: six parts
            produced.append(1)
            yield os.urandom(MiB)

    store.client.meta.events.register("before-send.s3.UploadPart", before_send)
    with pytest.raises(StorageError) as exc:
        store.put_stream(key, pieces(), size=26 * MiB)
    assert "InvalidArgument" in exc.value.detail
    assert len(produced) < 26  # production stopped: the rest was never encrypted
    assert store.get_bytes(key) == b"previous version"
    assert pending_uploads(store, prefix) == []
    assert store.buffers.used == 0
