"""Operation records are sealed with the keyring, bound to their key, listed newest first, updated under a lock."""

from datetime import UTC, datetime, timedelta

import pytest

from shared import layout
from shared.crypto.keyring import Keyring
from shared.errors import IntegrityError, NotFound
from shared.models import OperationRecord
from shared.records import OperationStore
from shared.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.unit

GRANTEE = "0x" + "ab" * 20


def _record(created: datetime, grantee: str = GRANTEE) -> OperationRecord:
    return OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee=grantee,
        encryption_public_key="pk",
        created_at=created,
        expires_at=created + timedelta(days=7),
    )


@pytest.fixture
def records() -> OperationStore:
    return OperationStore(MemoryObjectStore(), Keyring.from_json(Keyring.generate_json()))


def test_a_created_record_reads_back_and_is_not_stored_in_clear(records: OperationStore) -> None:
    record = _record(datetime(2026, 11, 26, tzinfo=UTC))
    records.create(record, {"text": "alice@example.com"})
    assert records.get(record.id) == record
    assert records.read_input(record.id) == {"text": "alice@example.com"}
    raw = records.store.get_bytes(layout.record_key(record.id)) + records.store.get_bytes(layout.input_key(record.id))
    assert b"alice@example.com" not in raw
    assert GRANTEE.encode() not in raw


def test_a_sealed_blob_moved_to_another_operation_does_not_decrypt(records: OperationStore) -> None:
    first, second = _record(datetime(2026, 11, 26, tzinfo=UTC)), _record(datetime(2026, 11, 26, tzinfo=UTC))
    records.create(first, {})
    records.create(second, {})
    records.store.put_bytes(layout.record_key(second.id), records.store.get_bytes(layout.record_key(first.id)))
    with pytest.raises(IntegrityError):
        records.get(second.id)


def test_unknown_operation_is_not_found(records: OperationStore) -> None:
    with pytest.raises(NotFound) as info:
        records.get(layout.new_operation_id("privacy-audit"))
    assert info.value.code == "operation_not_found"


def test_update_applies_the_change_and_stores_it(records: OperationStore) -> None:
    record = _record(datetime(2026, 11, 26, tzinfo=UTC))
    records.create(record, {})
    updated = records.update(record.id, lambda r: r.evolve(status="running"))
    assert updated.status == "running"
    assert records.get(record.id).status == "running"


def test_listing_is_newest_first_with_cursor_pages_and_per_grantee(records: OperationStore) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    mine = [_record(start + timedelta(minutes=i)) for i in range(5)]
    for record in mine:
        records.create(record, {})
    records.create(_record(start, grantee="0x" + "cd" * 20), {})

    first_page, cursor = records.list_ids(GRANTEE.upper().replace("0X", "0x"), limit=2)
    assert first_page == [mine[4].id, mine[3].id]
    assert cursor is not None
    second_page, cursor = records.list_ids(GRANTEE, cursor=cursor, limit=2)
    assert second_page == [mine[2].id, mine[1].id]
    last_page, cursor = records.list_ids(GRANTEE, cursor=cursor, limit=2)
    assert (last_page, cursor) == ([mine[0].id], None)
    assert len(list(records.all_ids())) == 6
