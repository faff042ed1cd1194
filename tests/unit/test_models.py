"""The design's shapes serialise exactly as documented."""

import copy
import json
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared.models import (
    ArtifactCollection,
    ArtifactMetadata,
    Encryption,
    OperationRecord,
    StoredArtifact,
    WrappedKey,
    format_time,
    utcnow,
)

pytestmark = pytest.mark.unit

WRAP = WrappedKey(version="x25519-xsalsa20-poly1305", nonce="bm9uY2U=", ephemPublicKey="ZXBo", ciphertext="Y3Q=")


def _artifact(name: str, size: int) -> StoredArtifact:
    return StoredArtifact(
        name=name,
        size=size,
        content_type="text/markdown",
        created_at=datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC),
        checksum="sha256:" + "a" * 64,
        ciphertext_checksum="sha256:" + "b" * 64,
        ciphertext_size=size + 48,
        encryption=Encryption(wrapped_key=WRAP),
    )


def test_artifact_metadata_has_the_design_fields_and_an_encoded_download_url() -> None:
    meta = ArtifactMetadata.from_stored("privacy-audit_abc", _artifact("a b#?.md", 10))
    body = json.loads(meta.model_dump_json())
    assert set(body) == {
        "name",
        "size",
        "content_type",
        "created_at",
        "download_url",
        "checksum",
        "ciphertext_checksum",
        "encryption",
    }
    assert body["download_url"] == "/api/v1/operations/privacy-audit_abc/artifacts/a%20b%23%3F.md"
    assert body["created_at"] == "2026-11-26T01:02:03Z"
    assert body["encryption"]["scheme"] == "cobblestone-256"
    assert body["encryption"]["wrapped_key"]["ephemPublicKey"] == "ZXBo"


def test_collection_counts_and_sums() -> None:
    items = [ArtifactMetadata.from_stored("op_x", _artifact(n, s)) for n, s in [("a", 3), ("b", 4)]]
    collection = ArtifactCollection.build(items)
    assert (collection.count, collection.total_size) == (2, 7)


def test_record_round_trips_and_rejects_unknown_fields() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    record = OperationRecord(
        id="privacy-audit_x",
        agent="privacy-audit",
        grantee="0x" + "1" * 40,
        encryption_public_key="k",
        created_at=now,
        expires_at=now,
        artifacts=[_artifact("a", 1)],
    )
    again = OperationRecord.model_validate_json(record.model_dump_json())
    assert again == record
    assert again.artifact("a") is not None and again.artifact("b") is None
    assert record.evolve(status="running").status == "running"
    with pytest.raises(ValidationError):
        OperationRecord.model_validate({**record.model_dump(), "surprise": 1})
    with pytest.raises(ValidationError):
        record.evolve(status="exploded")


def test_a_derived_value_is_computed_once_per_record_and_never_carried_to_a_new_version() -> None:
    record = OperationRecord(
        id="privacy-audit_x", agent="privacy-audit", grantee="0x" + "ab" * 20, encryption_public_key="pk",
        created_at=utcnow(), expires_at=utcnow() + timedelta(days=1),
    )  # fmt: skip
    calls: list[str] = []

    def status(r: OperationRecord) -> str:
        calls.append(r.status)
        return r.status

    assert record.derived("status", status) == record.derived("status", status) == "pending"
    assert calls == ["pending"]
    running = record.evolve(status="running")
    assert running.derived("status", status) == "running"
    assert record.model_copy(update={"status": "failed"}).derived("status", status) == "failed"
    assert copy.deepcopy(record).model_copy(update={"status": "cancelled"}).derived("status", status) == "cancelled"
    assert "_derived" not in pickle.loads(pickle.dumps(record)).__dict__
    assert record == record.evolve() and "_derived" not in record.model_dump()  # invisible to equality and dumps


def test_times_are_rfc3339_utc_to_the_second() -> None:
    assert format_time(datetime(2026, 3, 4, 5, 6, 7, 999999, tzinfo=UTC)) == "2026-03-04T05:06:07Z"
    assert format_time(datetime(2026, 1, 1, 5, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-01T03:00:00Z"
