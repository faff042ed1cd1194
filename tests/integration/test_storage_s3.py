"""S3ObjectStore against a real SeaweedFS: the shared contract, and the security properties moto cannot prove
(SigV4 on presigned URLs, expiry, server-side checksum verification, per-bucket CORS)."""

from __future__ import annotations

import hashlib
import io
import secrets
import threading
import time
import tracemalloc
from base64 import b64encode
from collections.abc import Iterator
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from shared.errors import NotFound, StorageError
from shared.settings import Settings
from shared.storage.s3 import MiB, S3ObjectStore, content_disposition, translate_errors
from tests.unit.storage.contract import ObjectStoreContract, sha256_hex

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def weed_store(object_store: S3ObjectStore) -> S3ObjectStore:
    """The session bucket (created by `strongroom init`'s code path), with S3's smallest multipart part size."""
    return S3ObjectStore(object_store.client, object_store.bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)


@pytest.fixture
def fresh_store(object_store: S3ObjectStore) -> Iterator[S3ObjectStore]:
    """A store on a bucket that does not exist yet; emptied and removed afterwards."""
    store = S3ObjectStore(object_store.client, f"sr-fresh-{secrets.token_hex(5)}")
    yield store
    with suppress(Exception):  # best-effort cleanup; the session data dir is temporary anyway
        store.delete_many([info.key for info in store.list("")])
        store.client.delete_bucket(Bucket=store.bucket)


class TestSeaweedContract(ObjectStoreContract):
    # HeadObject with ChecksumMode reports it (GetObjectAttributes does not, per INFRA.md; we never use that).
    reports_checksum = True
    writes_create_buckets = True  # observed with SeaweedFS 4.48 for an Admin identity

    @pytest.fixture
    def store(self, weed_store: S3ObjectStore) -> S3ObjectStore:
        return weed_store

    @pytest.fixture
    def prefix(self) -> str:
        return f"t-{secrets.token_hex(4)}/"

    @pytest.fixture
    def missing_bucket_store(self, fresh_store: S3ObjectStore) -> S3ObjectStore:
        return fresh_store

    def assert_no_pending_uploads(self, store: Any, prefix: str) -> None:
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix).get("Uploads", [])
        assert uploads == []


# --- presigned URLs ----------------------------------------------------------------------------------------


@pytest.fixture
def stored(weed_store: S3ObjectStore) -> str:
    key = f"t-{secrets.token_hex(4)}/artifacts/report.md.enc"
    weed_store.put_bytes(key, b"0123456789abcdef")
    return key


def test_presigned_get_works_with_plain_http(weed_store: S3ObjectStore, stored: str) -> None:
    response = httpx.get(weed_store.presign_get(stored, ttl=60).url)
    assert response.status_code == 200
    assert response.content == b"0123456789abcdef"


def test_presigned_range_get(weed_store: S3ObjectStore, stored: str) -> None:
    url = weed_store.presign_get(stored, ttl=60).url
    response = httpx.get(url, headers={"Range": "bytes=4-7"})
    assert response.status_code == 206
    assert response.content == b"4567"
    assert response.headers["content-range"] == "bytes 4-7/16"


def test_presigned_get_returns_requested_disposition_and_type(weed_store: S3ObjectStore, stored: str) -> None:
    url = weed_store.presign_get(stored, ttl=60, filename='Résumé "final".md', content_type="text/markdown").url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-disposition"] == content_disposition('Résumé "final".md')
    assert response.headers["content-disposition"].startswith('attachment; filename="R_sum_ _final_.md"')
    assert response.headers["content-type"] == "text/markdown"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.mark.parametrize("tamper", ["signature", "disposition", "expires", "key"])
def test_tampered_presigned_url_is_refused(weed_store: S3ObjectStore, stored: str, tamper: str) -> None:
    url = weed_store.presign_get(stored, ttl=60, filename="report.md").url
    params = dict(parse_qsl(urlsplit(url).query))
    if tamper == "signature":
        signature = params["X-Amz-Signature"]
        bad = _with_query(url, **{"X-Amz-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]})
    elif tamper == "disposition":
        bad = _with_query(url, **{"response-content-disposition": 'attachment; filename="evil.exe"'})
    elif tamper == "expires":
        bad = _with_query(url, **{"X-Amz-Expires": "604800"})
    else:
        bad = url.replace("report.md.enc", "other.md.enc")
    assert httpx.get(url).status_code == 200  # the untouched URL works
    assert httpx.get(bad).status_code == 403


def test_expired_presigned_url_is_refused(weed_store: S3ObjectStore, stored: str) -> None:
    url = weed_store.presign_get(stored, ttl=1).url
    time.sleep(2.1)
    response = httpx.get(url)
    assert response.status_code == 403


# --- server-side checksum verification ---------------------------------------------------------------------


def test_server_rejects_a_wrong_checksum_and_we_map_it(weed_store: S3ObjectStore) -> None:
    """The local pre-check is bypassed on purpose: this proves the server's own check and our error mapping."""
    key = f"t-{secrets.token_hex(4)}/corrupt"
    wrong = b64encode(hashlib.sha256(b"not the body").digest()).decode()
    with pytest.raises(StorageError) as exc, translate_errors("PutObject", key):
        weed_store.client.put_object(Bucket=weed_store.bucket, Key=key, Body=b"the body", ChecksumSHA256=wrong)
    assert exc.value.code == "checksum_mismatch"
    with pytest.raises(NotFound):
        weed_store.head(key)


def test_server_rejects_a_wrong_part_checksum(weed_store: S3ObjectStore) -> None:
    key = f"t-{secrets.token_hex(4)}/corrupt-part"
    client, bucket = weed_store.client, weed_store.bucket
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    try:
        wrong = b64encode(hashlib.sha256(b"other").digest()).decode()
        with pytest.raises(StorageError) as exc, translate_errors("UploadPart", key):
            client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024, ChecksumSHA256=wrong
            )
        assert exc.value.code == "checksum_mismatch"
    finally:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)


def test_multipart_upload_round_trips_through_a_presigned_url(weed_store: S3ObjectStore) -> None:
    data = secrets.token_bytes(11 * MiB)
    key = f"t-{secrets.token_hex(4)}/big.enc"
    weed_store.put_file(key, io.BytesIO(data), size=len(data), sha256_hex=sha256_hex(data))
    info = weed_store.head(key)
    assert info.etag.endswith("-3")
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert info.checksum_sha256 == b64encode(composite).decode() + "-3"
    url = weed_store.presign_get(key, ttl=60).url
    tail = httpx.get(url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]


# --- bucket configuration ----------------------------------------------------------------------------------


def _preflight(store: S3ObjectStore, key: str, origin: str) -> httpx.Response:
    url = store.presign_get(key, ttl=60).url
    return httpx.options(
        url,
        headers={"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"},
    )


def test_cors_preflight_allows_only_configured_origins(fresh_store: S3ObjectStore) -> None:
    allowed = "http://app.strongroom.test:8080"
    fresh_store.ensure_bucket(cors_origins=(allowed,), expire_after_days=8)
    fresh_store.put_bytes("operations/x/a.enc", b"x")

    ok = _preflight(fresh_store, "operations/x/a.enc", allowed)
    assert ok.headers.get("access-control-allow-origin") == allowed
    assert "GET" in ok.headers.get("access-control-allow-methods", "")

    other = _preflight(fresh_store, "operations/x/a.enc", "http://evil.test")
    assert "access-control-allow-origin" not in other.headers

    get = httpx.get(fresh_store.presign_get("operations/x/a.enc", ttl=60).url, headers={"Origin": allowed})
    assert get.headers.get("access-control-allow-origin") == allowed


def test_bucket_without_origins_allows_none(fresh_store: S3ObjectStore, page_origin: str) -> None:
    """The server-wide fallback allows ``page_origin``; our explicit rule must override it."""
    fresh_store.ensure_bucket()
    fresh_store.put_bytes("k", b"x")
    response = _preflight(fresh_store, "k", page_origin)
    assert "access-control-allow-origin" not in response.headers


def test_ensure_bucket_stores_lifecycle_rules(fresh_store: S3ObjectStore) -> None:
    fresh_store.ensure_bucket(expire_after_days=8)
    fresh_store.ensure_bucket(expire_after_days=8)  # idempotent on an existing bucket
    rules = fresh_store.client.get_bucket_lifecycle_configuration(Bucket=fresh_store.bucket)["Rules"]
    expiry = [r for r in rules if r.get("Expiration")]
    assert [(r["Filter"].get("Prefix"), r["Expiration"]["Days"]) for r in expiry] == [("operations/", 8)]


def _own_client_store(settings: Settings, **kwargs: Any) -> S3ObjectStore:
    """The session bucket through a client of its own, so a test's event hooks touch no other test."""
    base = S3ObjectStore.from_settings(settings)
    return S3ObjectStore(base.client, base.bucket, **kwargs)


def _part_number(request: Any) -> int:
    return int(parse_qs(urlsplit(request.url).query)["partNumber"][0])


def _write_random(path: Any, mib: int) -> str:
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(mib):
            block = secrets.token_bytes(MiB)
            hasher.update(block)
            out.write(block)
    return hasher.hexdigest()


def test_put_file_memory_stays_below_one_part(settings: Settings, tmp_path: Any) -> None:
    """Parts are streamed from the file (hashed, signed and sent in small reads), never buffered whole: with four
    8 MiB parts on the wire at once (a barrier proves it), the peak stays under half of one part."""
    store = _own_client_store(settings, multipart_threshold=8 * MiB, part_size=8 * MiB, max_concurrency=4)
    first_round = threading.Barrier(4, timeout=20)

    def before_send(request: Any, **_: Any) -> None:
        if _part_number(request) <= 4:
            first_round.wait()

    store.client.meta.events.register("before-send.s3.UploadPart", before_send)
    path = tmp_path / "big.bin"
    digest = _write_random(path, 40)
    key = f"t-{secrets.token_hex(4)}/rss.enc"
    tracemalloc.start()
    try:
        with path.open("rb") as src:
            store.put_file(key, src, size=40 * MiB, sha256_hex=digest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.head(key).size == 40 * MiB
    assert peak < 4 * MiB, f"peak Python allocation {peak} bytes while uploading 40 MiB, four 8 MiB parts at once"


def test_a_part_corrupted_on_the_wire_is_refused_and_the_upload_aborted(settings: Settings, tmp_path: Any) -> None:
    """Part 2's checksum header is changed after we computed it (as a flipped bit in transit would disagree with
    it): SeaweedFS must refuse that part, and the concurrent upload must abort, leaving nothing behind."""
    store = _own_client_store(settings, multipart_threshold=5 * MiB, part_size=5 * MiB, max_concurrency=3)
    wrong = b64encode(hashlib.sha256(b"not this part").digest()).decode()

    def before_sign(request: Any, **_: Any) -> None:
        if _part_number(request) == 2:
            del request.headers["x-amz-checksum-sha256"]
            request.headers["x-amz-checksum-sha256"] = wrong

    store.client.meta.events.register("before-sign.s3.UploadPart", before_sign)
    prefix = f"t-{secrets.token_hex(4)}/"
    path = tmp_path / "src.bin"
    digest = _write_random(path, 21)
    with path.open("rb") as src, pytest.raises(StorageError) as exc:
        store.put_file(prefix + "obj", src, size=21 * MiB, sha256_hex=digest)
    assert exc.value.code == "checksum_mismatch"
    assert not store.exists(prefix + "obj")
    assert store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix).get("Uploads", []) == []
