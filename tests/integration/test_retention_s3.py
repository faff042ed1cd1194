"""Retention on real SeaweedFS: cleanup deletes exactly the expired operations, object by object; the sweep
removes what no record names; the bucket carries the lifecycle backstop."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError
from s3_pipeline_support import now, private_services, record

from shared import audit_log, layout
from shared.crypto.keyring import Keyring
from shared.events import new_event
from shared.models import OperationRecord
from shared.settings import Settings
from worker_service.pipeline import retention
from worker_service.services import Services

pytestmark = pytest.mark.integration

KEYRING = Keyring.from_json(Keyring.generate_json("ret-k1"))


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    yield from private_services(settings, KEYRING)


def _stored(services: Services, op: OperationRecord) -> list[str]:
    """Create an operation with an artifact object, an embedded copy and an access log; return its object keys."""
    services.records.create(op, {"text": "x"})
    run = layout.new_run_id()
    services.store.put_bytes(layout.artifact_key(op.id, "report.md", run), b"ciphertext")
    services.records.put_sealed(layout.embedded_key(op.id, "report.md", run), b"plain")
    audit_log.append_batch(services.records, op.id, [new_event(operation_id=op.id, action="auth", result="ok")])
    index = layout.grantee_index_key(op.grantee, int(op.created_at.timestamp()), op.id)
    return [info.key for info in services.store.list(layout.operation_prefix(op.id))] + [index]


def test_cleanup_deletes_exactly_the_expired_operations(services: Services) -> None:
    t = now()
    expired = [record(created=t - timedelta(days=8)), record(created=t - timedelta(days=2), retention_days=1)]
    kept = [record(created=t - timedelta(days=6)), record(created=t, status="pending")]
    objects = {op.id: _stored(services, op) for op in expired + kept}
    assert all(len(keys) == 7 for keys in objects.values())

    assert retention.cleanup_expired(services, t) == 2

    for op in expired:
        assert not any(services.store.exists(key) for key in objects[op.id]), op.id
    for op in kept:
        assert all(services.store.exists(key) for key in objects[op.id]), op.id
        assert services.records.get(op.id) == op
    assert retention.cleanup_expired(services, t) == 0


def test_sweep_removes_unnamed_objects_only_when_old_enough(services: Services) -> None:
    op = record(created=now())
    _stored(services, op)  # the record names no artifact: report.md and its embedded copy are orphans
    assert retention.sweep_orphans(services) == 0  # just uploaded: could be a run in flight
    assert retention.sweep_orphans(services, now=now() + timedelta(hours=2)) == 2
    assert list(services.store.list(layout.artifacts_prefix(op.id))) == []
    assert services.store.exists(layout.record_key(op.id))
    assert audit_log.verify_chain(services.records, op.id).ok


def test_bucket_lifecycle_backstop_expires_operations_after_retention_plus_grace(services: Services) -> None:
    rules = services.store.client.get_bucket_lifecycle_configuration(Bucket=services.store.bucket)["Rules"]  # type: ignore[attr-defined]
    expiry = [r for r in rules if "Expiration" in r]
    assert expiry and expiry[0]["Expiration"]["Days"] == services.settings.artifact_retention_days + 3
    assert expiry[0]["Filter"]["Prefix"] == "operations/"


def test_the_lifecycle_rule_also_aborts_incomplete_multipart_uploads(services: Services) -> None:
    rules = services.store.client.get_bucket_lifecycle_configuration(Bucket=services.store.bucket)["Rules"]  # type: ignore[attr-defined]
    aborts = [r["AbortIncompleteMultipartUpload"] for r in rules if "AbortIncompleteMultipartUpload" in r]
    assert aborts == [{"DaysAfterInitiation": 1}]


def _start_upload(services: Services, key: str) -> str:
    """A multipart upload with one 5 MiB part, never completed: what a worker killed mid-store leaves."""
    client, bucket = services.store.client, services.store.bucket  # type: ignore[attr-defined]
    upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * (5 * 1024 * 1024))
    return upload_id


def test_sweep_aborts_stale_multipart_uploads_and_their_parts_are_gone(services: Services) -> None:
    """Issue 10 item 6: parts of an upload nobody will complete are freed by the sweep, not kept forever."""
    client, bucket = services.store.client, services.store.bucket  # type: ignore[attr-defined]
    dead = record(created=now())
    services.records.create(dead, {})
    live = record(created=now(), status="running")
    services.records.create(live, {})
    services.redis.set(layout.redis_run_lease(live.id), "a-live-run", ex=600)
    dead_key = layout.artifacts_prefix(dead.id) + "run-x/report.md.enc"
    live_key = layout.artifacts_prefix(live.id) + "run-y/report.md.enc"
    dead_upload, live_upload = _start_upload(services, dead_key), _start_upload(services, live_key)
    assert client.list_parts(Bucket=bucket, Key=dead_key, UploadId=dead_upload)["Parts"]

    assert retention.sweep_orphans(services) == 0  # young: could be an upload in flight
    assert retention.sweep_orphans(services, now=now() + timedelta(hours=7)) == 1
    pending = client.list_multipart_uploads(Bucket=bucket, Prefix=layout.OPERATIONS).get("Uploads", [])
    assert [u["UploadId"] for u in pending] == [live_upload]  # the live run keeps its upload
    with pytest.raises(ClientError) as exc:
        client.list_parts(Bucket=bucket, Key=dead_key, UploadId=dead_upload)
    assert exc.value.response["Error"]["Code"] == "NoSuchUpload"  # the parts are gone with it
    services.redis.delete(layout.redis_run_lease(live.id))
    assert retention.sweep_orphans(services, now=now() + timedelta(hours=7)) == 1
    assert client.list_multipart_uploads(Bucket=bucket, Prefix="").get("Uploads", []) == []
