"""The access-log format and ``verify_chain``: a valid chain verifies, and every kind of tampering is reported."""

from __future__ import annotations

import json

import pytest

from shared import audit_log, layout
from shared.crypto.keyring import Keyring
from shared.errors import IntegrityError
from shared.events import new_event
from shared.records import OperationStore
from shared.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.unit

OP = layout.new_operation_id("privacy-audit")


@pytest.fixture
def records() -> OperationStore:
    return OperationStore(MemoryObjectStore(), Keyring.from_json(Keyring.generate_json("k1")))


def _events(n: int, op: str | None = OP) -> list:
    return [
        new_event(operation_id=op, actor="0x" + "11" * 20, action="artifact.url", result="allowed") for _ in range(n)
    ]


def _write_chain(records: OperationStore, batches: int = 4, op: str | None = OP) -> None:
    for _ in range(batches):
        audit_log.append_batch(records, op, _events(2, op))


def _reseal(records: OperationStore, op: str | None, sequence: int, doc: dict) -> None:
    """Write a batch as an insider holding the keyring would: valid AEAD, so only the chain can catch it."""
    records.put_sealed(audit_log.batch_key(op, sequence), json.dumps(doc, separators=(",", ":")).encode())


def _doc(records: OperationStore, op: str | None, sequence: int) -> dict:
    return json.loads(records.get_sealed(audit_log.batch_key(op, sequence)))


@pytest.mark.parametrize("op", [OP, None], ids=["operation", "global"])
def test_appended_chain_verifies_and_links_each_batch_to_the_previous(records: OperationStore, op: str | None) -> None:
    _write_chain(records, 3, op)
    report = audit_log.verify_chain(records, op)
    assert report.ok, report.problems
    assert (report.batches, report.events, report.head_sequence) == (3, 6, 3)
    first, second = _doc(records, op, 1), _doc(records, op, 2)
    assert first["prev"] == audit_log.GENESIS and first["sequence"] == 1 and first["v"] == 1
    raw_first = records.get_sealed(audit_log.batch_key(op, 1))
    assert second["prev"] == audit_log.digest(raw_first)
    assert list(first) == ["v", "sequence", "prev", "events"]


def test_empty_log_verifies(records: OperationStore) -> None:
    report = audit_log.verify_chain(records, OP)
    assert report.ok and report.batches == 0 and report.head_sequence is None


def test_append_drops_events_already_in_the_newest_batch(records: OperationStore) -> None:
    events = _events(3)
    assert audit_log.append_batch(records, OP, events) is not None
    assert audit_log.append_batch(records, OP, events) is None  # redelivered whole
    batch = audit_log.append_batch(records, OP, [events[0], *_events(1), events[0]])
    assert batch is not None and len(batch.events) == 1
    assert audit_log.verify_chain(records, OP).events == 4


def test_byte_level_edit_fails_authentication(records: OperationStore) -> None:
    _write_chain(records)
    key = audit_log.batch_key(OP, 2)
    blob = bytearray(records.store.get_bytes(key))
    blob[-20] ^= 1
    records.store.put_bytes(key, bytes(blob))
    report = audit_log.verify_chain(records, OP)
    assert not report.ok
    assert any("batch 2 does not verify" in p for p in report.problems)


def test_resealed_edit_breaks_the_chain(records: OperationStore) -> None:
    _write_chain(records)
    doc = _doc(records, OP, 2)
    doc["events"][0]["result"] = "denied"
    _reseal(records, OP, 2, doc)
    report = audit_log.verify_chain(records, OP)
    assert any("batch 3 does not chain" in p for p in report.problems)
    with pytest.raises(IntegrityError):
        report.raise_for_problems()


def test_resealed_edit_of_the_last_batch_is_caught_by_the_head(records: OperationStore) -> None:
    _write_chain(records)
    doc = _doc(records, OP, 4)
    doc["events"].pop()
    _reseal(records, OP, 4, doc)
    assert any("differs from the digest in the head" in p for p in audit_log.verify_chain(records, OP).problems)


def test_removed_middle_batch_is_reported(records: OperationStore) -> None:
    _write_chain(records)
    records.store.delete(audit_log.batch_key(OP, 2))
    problems = audit_log.verify_chain(records, OP).problems
    assert any("batch 2 is missing" in p for p in problems)
    assert not any("does not chain" in p for p in problems)  # the link across a gap is the gap, said once


def test_removed_tail_is_reported(records: OperationStore) -> None:
    _write_chain(records)
    records.store.delete(audit_log.batch_key(OP, 4))
    assert any("tail removed" in p for p in audit_log.verify_chain(records, OP).problems)


def test_removed_head_is_reported(records: OperationStore) -> None:
    _write_chain(records)
    records.store.delete(audit_log.head_key(OP))
    assert any("head is missing" in p for p in audit_log.verify_chain(records, OP).problems)


def test_swapped_objects_do_not_open_under_each_other_s_key(records: OperationStore) -> None:
    _write_chain(records)
    k2, k3 = audit_log.batch_key(OP, 2), audit_log.batch_key(OP, 3)
    b2, b3 = records.store.get_bytes(k2), records.store.get_bytes(k3)
    records.store.put_bytes(k2, b3)
    records.store.put_bytes(k3, b2)
    problems = audit_log.verify_chain(records, OP).problems
    assert any("batch 2 does not verify" in p for p in problems)
    assert any("batch 3 does not verify" in p for p in problems)


def test_resealed_reorder_is_reported(records: OperationStore) -> None:
    _write_chain(records)
    d2, d3 = _doc(records, OP, 2), _doc(records, OP, 3)
    d2["sequence"], d3["sequence"] = 3, 2
    _reseal(records, OP, 3, d2)
    _reseal(records, OP, 2, d3)
    assert not audit_log.verify_chain(records, OP).ok


def test_resealed_insertion_is_reported(records: OperationStore) -> None:
    """An insider shifts batches 3..4 up by one and forges a batch 3 chained to batch 2."""
    _write_chain(records)
    d3, d4 = _doc(records, OP, 3), _doc(records, OP, 4)
    forged = {"v": 1, "sequence": 3, "prev": d3["prev"], "events": []}
    d3["sequence"], d4["sequence"] = 4, 5
    _reseal(records, OP, 5, d4)
    _reseal(records, OP, 4, d3)
    _reseal(records, OP, 3, forged)
    report = audit_log.verify_chain(records, OP)
    assert any("batch 4 does not chain" in p for p in report.problems)


def test_batch_copied_from_another_operation_does_not_open(records: OperationStore) -> None:
    other = layout.new_operation_id("privacy-audit")
    _write_chain(records, 2)
    _write_chain(records, 2, other)
    records.store.put_bytes(audit_log.batch_key(OP, 2), records.store.get_bytes(audit_log.batch_key(other, 2)))
    assert any("batch 2 does not verify" in p for p in audit_log.verify_chain(records, OP).problems)


def test_head_left_behind_by_a_crash_is_a_warning_and_the_next_append_repairs_it(records: OperationStore) -> None:
    _write_chain(records, 2)
    head = records.get_sealed(audit_log.head_key(OP))
    audit_log.append_batch(records, OP, _events(1))
    records.put_sealed(audit_log.head_key(OP), head)  # as if the process died before moving the head
    report = audit_log.verify_chain(records, OP)
    assert report.ok and report.warnings
    batch = audit_log.append_batch(records, OP, _events(1))
    assert batch is not None and batch.sequence == 4  # continued after batch 3, not over it
    report = audit_log.verify_chain(records, OP)
    assert report.ok and not report.warnings and report.batches == 4


def test_read_page_returns_whole_batches_with_a_cursor(records: OperationStore) -> None:
    _write_chain(records, 3)
    events, cursor = audit_log.read_page(records, OP, max_events=3)
    assert len(events) == 2 and cursor == 1
    events, cursor = audit_log.read_page(records, OP, after=cursor, max_events=4)
    assert len(events) == 4 and cursor is None


# --- appending to a damaged log (issue 10 item 5) --------------------------------------------------------------


def _append(records: OperationStore, anchors: dict[str, audit_log.Head]) -> audit_log.Batch:
    """As the worker does: continue from the head kept outside S3 (a dict stands in for Redis), then move it."""
    batch = audit_log.append_batch(records, OP, _events(1), anchor=anchors.get(OP))
    assert batch is not None
    anchors[OP] = audit_log.Head(batch.sequence, batch.digest)
    return batch


def test_a_crash_after_the_first_batch_is_continued_quietly(records: OperationStore) -> None:
    audit_log.append_batch(records, OP, _events(1))
    records.store.delete(audit_log.head_key(OP))  # as if the process died before writing the first head
    batch = audit_log.append_batch(records, OP, _events(1))
    assert batch is not None and batch.sequence == 2
    assert all(e.action != audit_log.GAP_ACTION for e in batch.events)
    assert audit_log.verify_chain(records, OP).ok


def test_a_rolled_back_head_is_recorded_as_a_gap_even_with_every_batch_still_there(records: OperationStore) -> None:
    anchors: dict[str, audit_log.Head] = {}
    _append(records, anchors)
    old_head = records.store.get_bytes(audit_log.head_key(OP))
    _append(records, anchors)
    records.store.put_bytes(audit_log.head_key(OP), old_head)
    report = audit_log.verify_chain(records, OP, anchor=anchors[OP])
    assert any("rolled back" in p for p in report.problems), report.problems
    batch = _append(records, anchors)
    assert batch.sequence == 3 and batch.events[0].action == audit_log.GAP_ACTION
    assert "older than batch 2" in (batch.events[0].reason or "")


def test_a_removed_log_is_reported_and_continued_after_its_last_known_batch(records: OperationStore) -> None:
    anchors: dict[str, audit_log.Head] = {}
    for _ in range(3):
        _append(records, anchors)
    records.store.delete_many([info.key for info in records.store.list(audit_log.log_prefix(OP))])
    assert audit_log.verify_chain(records, OP).ok  # S3 alone: an empty log
    report = audit_log.verify_chain(records, OP, anchor=anchors[OP])
    assert any("batches 1..3 named by the head kept outside S3 are missing" in p for p in report.problems)
    batch = _append(records, anchors)
    assert batch.sequence == 4 and batch.events[0].action == audit_log.GAP_ACTION
    report = audit_log.verify_chain(records, OP, anchor=anchors[OP])
    assert any("batch 1 is missing (next stored is 4)" in p for p in report.problems), report.problems


def test_a_replaced_batch_named_by_the_anchor_is_recorded(records: OperationStore) -> None:
    anchors: dict[str, audit_log.Head] = {}
    for _ in range(2):
        _append(records, anchors)
    doc = _doc(records, OP, 2)
    doc["events"] = []
    _reseal(records, OP, 2, doc)  # an insider with the keyring; head.json re-sealed to match as well
    forged = audit_log.digest(records.get_sealed(audit_log.batch_key(OP, 2)))
    records.put_sealed(audit_log.head_key(OP), json.dumps({"v": 1, "sequence": 2, "sha256": forged}).encode())
    assert audit_log.verify_chain(records, OP).ok  # consistent in S3
    assert not audit_log.verify_chain(records, OP, anchor=anchors[OP]).ok
    batch = _append(records, anchors)
    assert batch.events[0].action == audit_log.GAP_ACTION and "differs" in (batch.events[0].reason or "")


def test_an_object_planted_as_the_next_batch_does_not_stop_the_log(records: OperationStore) -> None:
    """Anyone with S3 write access can put garbage where the next batch goes: the log records it and carries on,
    instead of failing every append from then on (its events would stay pending for good)."""
    anchors: dict[str, audit_log.Head] = {}
    for _ in range(2):
        _append(records, anchors)
    records.store.put_bytes(audit_log.batch_key(OP, 3), b"not a sealed batch")
    batch = _append(records, anchors)
    assert batch.sequence == 4 and batch.events[0].action == audit_log.GAP_ACTION
    assert "batch 3 does not verify" in (batch.events[0].reason or "")
    problems = audit_log.verify_chain(records, OP, anchor=anchors[OP]).problems
    assert any("batch 3 does not verify" in p for p in problems), problems
    assert _append(records, anchors).sequence == 5  # and the log goes on
