"""``audit_log.read_verified_page`` (review finding 4): the access log served a page at a time, the hash chain
verified as the pages are read, every kind of tampering still reported on the page that covers it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import audit_log, layout
from shared.crypto.keyring import Keyring
from shared.errors import ValidationFailed
from shared.events import new_event
from shared.records import OperationStore
from shared.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.unit

OP = layout.new_operation_id("privacy-audit")


@pytest.fixture
def records() -> OperationStore:
    return OperationStore(MemoryObjectStore(), Keyring.from_json(Keyring.generate_json("k1")))


def write(records: OperationStore, batches: int, per_batch: int = 2) -> list[str]:
    ids: list[str] = []
    for _ in range(batches):
        events = [new_event(operation_id=OP, action="operation.read", result="allowed") for _ in range(per_batch)]
        audit_log.append_batch(records, OP, events)
        ids += [e.id for e in events]
    return ids


def walk(records: OperationStore, max_events: int) -> list[audit_log.Page]:
    pages, after = [], 0
    while True:
        page = audit_log.read_verified_page(records, OP, after=after, max_events=max_events)
        pages.append(page)
        if page.next_after is None:
            return pages
        after = page.next_after


class CountingReads:
    """Counts sealed reads per key, to prove no batch is read twice while walking the pages."""

    def __init__(self, records: OperationStore) -> None:
        self.counts: dict[str, int] = {}
        original = records.get_sealed

        def get_sealed(key: str) -> bytes:
            self.counts[key] = self.counts.get(key, 0) + 1
            return original(key)

        records.get_sealed = get_sealed  # type: ignore[method-assign]


def test_pages_cover_every_event_once_in_order(records: OperationStore) -> None:
    ids = write(records, 5)
    pages = walk(records, max_events=4)
    assert [len(p.events) for p in pages] == [4, 4, 2]
    assert [e.id for p in pages for e in p.events] == ids
    assert all(p.chain_valid for p in pages)
    assert [p.next_after for p in pages] == [2, 4, None]


def test_a_batch_larger_than_the_limit_is_still_served_whole(records: OperationStore) -> None:
    write(records, 2, per_batch=3)
    pages = walk(records, max_events=1)
    assert [len(p.events) for p in pages] == [3, 3]


def test_an_empty_log_is_one_valid_empty_page(records: OperationStore) -> None:
    page = audit_log.read_verified_page(records, OP)
    assert (page.events, page.next_after, page.chain_valid) == ([], None, True)


def test_walking_reads_each_batch_about_once_and_holds_one_page(records: OperationStore) -> None:
    write(records, 12)
    reads = CountingReads(records)
    pages = walk(records, max_events=6)
    assert max(len(p.events) for p in pages) <= 6
    batch_reads = {k: n for k, n in reads.counts.items() if not k.endswith("head.json")}
    # Each page boundary costs two extra reads: the batch that did not fit (served by the next page) and the
    # next page's anchor (the batch it chains from). Nothing is read a third time.
    assert len(pages) == 4
    assert max(batch_reads.values()) == 2
    assert sum(batch_reads.values()) == 12 + 2 * (len(pages) - 1)
    # The head: once per page, read before the listing, so a concurrent append never looks like a removed tail.
    assert sum(n for k, n in reads.counts.items() if k.endswith("head.json")) == len(pages)


def _reseal(records: OperationStore, sequence: int, change: Any) -> None:
    key = audit_log.batch_key(OP, sequence)
    doc = json.loads(records.get_sealed(key))
    change(doc)
    records.put_sealed(key, json.dumps(doc, separators=(",", ":")).encode())


def _valid(records: OperationStore) -> list[bool]:
    return [p.chain_valid for p in walk(records, max_events=4)]


def test_an_edited_batch_is_reported_on_the_page_that_follows_it(records: OperationStore) -> None:
    write(records, 6)
    _reseal(records, 2, lambda doc: doc["events"][0].update(result="denied"))  # end of page 1
    assert _valid(records) == [True, False, True]  # batch 3 no longer chains to the edited batch 2


def test_a_removed_batch_is_reported(records: OperationStore) -> None:
    write(records, 6)
    records.store.delete(audit_log.batch_key(OP, 4))
    assert False in _valid(records)


def test_a_removed_tail_is_reported_on_the_last_page(records: OperationStore) -> None:
    write(records, 6)
    records.store.delete(audit_log.batch_key(OP, 6))
    assert _valid(records)[-1] is False


def test_a_batch_that_does_not_open_is_reported_and_skipped(records: OperationStore) -> None:
    ids = write(records, 3)
    records.store.put_bytes(audit_log.batch_key(OP, 2), b"garbage")
    pages = walk(records, max_events=100)
    assert not pages[0].chain_valid
    assert [e.id for p in pages for e in p.events] == ids[:2] + ids[4:]


def test_a_cursor_past_the_log_is_refused(records: OperationStore) -> None:
    write(records, 2)
    with pytest.raises(ValidationFailed) as info:
        audit_log.read_verified_page(records, OP, after=9)
    assert info.value.code == "cursor_invalid"
    last = audit_log.read_verified_page(records, OP, after=2)
    assert (last.events, last.next_after, last.chain_valid) == ([], None, True)


def test_a_page_carries_the_bytes_each_digest_covers_and_the_head(records: OperationStore) -> None:
    """What a client needs to recompute the chain itself (the browser page does): each batch's plaintext, whose
    SHA-256 is its digest and the next batch's ``prev``, and the head."""
    ids = write(records, 3)
    page = audit_log.read_verified_page(records, OP)
    assert [b.sequence for b in page.chain] == [1, 2, 3]
    prev = audit_log.GENESIS
    for batch in page.chain:
        assert audit_log.digest(batch.plaintext) == batch.digest and batch.prev == prev
        assert audit_log.decode_batch(batch.plaintext) == batch
        prev = batch.digest
    assert [e.id for b in page.chain for e in audit_log.decode_batch(b.plaintext).events] == ids
    assert page.head == audit_log.Head(3, prev)


def test_a_page_is_bounded_by_plaintext_bytes_too(records: OperationStore) -> None:
    ids = write(records, 4)
    one = len(audit_log.read_verified_page(records, OP, max_events=1).chain[0].plaintext)
    pages, after = [], 0
    while True:
        page = audit_log.read_verified_page(records, OP, after=after, max_bytes=one * 2 + 10)
        pages.append(page)
        if page.next_after is None:
            break
        after = page.next_after
    assert [len(p.chain) for p in pages] == [2, 2]
    assert [e.id for p in pages for e in p.events] == ids and all(p.chain_valid for p in pages)
    tiny = audit_log.read_verified_page(records, OP, max_bytes=1)  # at least one batch, however small the bound
    assert (len(tiny.chain), tiny.next_after) == (1, 1)
