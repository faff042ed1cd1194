"""The access log: hash-chained, keyring-sealed batches of audit events in S3, and the function that verifies them.

Shared by the worker (which appends) and the API (which reads an operation's log for its grantee), so it imports
nothing from either service. See docs/audit-log.md for the format and how to verify a log by hand.

A log is either an operation's (``operations/{id}/access_log/``) or the global one (``audit/``, events that name
no operation or outlive it, e.g. ``operation.expired``). Each batch is the UTF-8 JSON::

    {"v":1,"sequence":n,"prev":"<sha256 hex of batch n-1's plaintext bytes; 64 zeros for n = 1>","events":[...]}

sealed with the server keyring at ``{prefix}{n:012d}.json`` (the S3 key is the AEAD's associated data, so a batch
copied to another sequence or operation does not open). After each batch, ``head.json`` records the newest
sequence and its digest, so a removed tail is detected too. Appending is done by one writer at a time (the caller
holds the operation lock); a crash between a batch and its head leaves the head behind, which the next append
repairs and ``verify_chain`` reports as a warning, not a failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared import layout
from shared.errors import IntegrityError, NotFound, StrongroomError, ValidationFailed
from shared.models import AuditEvent
from shared.records import OperationStore

FORMAT_VERSION = 1
GENESIS = "0" * 64
_BATCH_NAME = re.compile(r"(\d{12})\.json")


@dataclass(frozen=True)
class Batch:
    sequence: int
    prev: str
    events: tuple[AuditEvent, ...]
    digest: str  # SHA-256 hex of the stored plaintext: the next batch's ``prev``


@dataclass(frozen=True)
class Tail:
    """Where the next batch goes: its sequence is ``sequence + 1`` and its ``prev`` is ``digest``."""

    sequence: int
    digest: str
    event_ids: frozenset[str]  # ids in the newest batch, to drop a redelivered event


@dataclass
class ChainReport:
    """Outcome of ``verify_chain``: ``ok`` is False as soon as one problem was found."""

    log: str
    batches: int = 0
    events: int = 0
    head_sequence: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise IntegrityError(f"access log {self.log} failed verification: {'; '.join(self.problems)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "ok": self.ok,
            "batches": self.batches,
            "events": self.events,
            "head_sequence": self.head_sequence,
            "problems": self.problems,
            "warnings": self.warnings,
        }


# --- keys -------------------------------------------------------------------------------------------------


def log_name(operation_id: str | None) -> str:
    return operation_id or "global"


def log_prefix(operation_id: str | None) -> str:
    return layout.access_log_prefix(operation_id) if operation_id else layout.GLOBAL_AUDIT


def batch_key(operation_id: str | None, sequence: int) -> str:
    if operation_id:
        return layout.access_log_key(operation_id, sequence)
    return layout.global_access_log_key(sequence)


def head_key(operation_id: str | None) -> str:
    return layout.access_log_head_key(operation_id) if operation_id else layout.global_access_log_head_key()


def _batch_keys(records: OperationStore, operation_id: str | None, after: int = 0) -> Iterator[tuple[int, str]]:
    """(sequence, key) of stored batches in ascending order, after sequence ``after``."""
    prefix = log_prefix(operation_id)
    start_after = batch_key(operation_id, after) if after > 0 else None
    for info in records.store.list(prefix, start_after=start_after):
        match = _BATCH_NAME.fullmatch(info.key[len(prefix) :])
        if match:
            yield int(match.group(1)), info.key


# --- encoding ---------------------------------------------------------------------------------------------


def digest(plaintext: bytes) -> str:
    return hashlib.sha256(plaintext).hexdigest()


def encode_batch(sequence: int, prev: str, events: Sequence[AuditEvent]) -> bytes:
    """The exact bytes that are sealed and hashed; key order is fixed so any reader can re-derive them."""
    doc = {
        "v": FORMAT_VERSION,
        "sequence": sequence,
        "prev": prev,
        "events": [event.model_dump(mode="json") for event in events],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_batch(plaintext: bytes) -> Batch:
    """Parse a batch; ``IntegrityError`` if it is not a well-formed v1 batch."""
    try:
        doc = json.loads(plaintext)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
            raise ValueError("not a v1 batch")
        sequence, prev, raw_events = doc["sequence"], doc["prev"], doc["events"]
        if not isinstance(sequence, int) or not isinstance(prev, str) or not isinstance(raw_events, list):
            raise ValueError("bad field types")
        events = tuple(AuditEvent.model_validate(e) for e in raw_events)
    except (ValueError, KeyError, TypeError, ValidationError):
        raise IntegrityError("access log batch is malformed") from None
    return Batch(sequence, prev, events, digest(plaintext))


def _read_head(records: OperationStore, operation_id: str | None) -> tuple[int, str] | None:
    try:
        doc = json.loads(records.get_sealed(head_key(operation_id)))
    except NotFound:
        return None
    except ValueError:
        raise IntegrityError("access log head is malformed") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sequence"), int) or not isinstance(doc.get("sha256"), str):
        raise IntegrityError("access log head is malformed")
    return doc["sequence"], doc["sha256"]


def read_batch(records: OperationStore, operation_id: str | None, sequence: int) -> Batch:
    """One batch, opened and parsed; its embedded sequence must match its key."""
    batch = decode_batch(records.get_sealed(batch_key(operation_id, sequence)))
    if batch.sequence != sequence:
        raise IntegrityError(f"access log batch {sequence} claims sequence {batch.sequence}")
    return batch


# --- appending (the worker, under the log's lock) ----------------------------------------------------------


def read_tail(records: OperationStore, operation_id: str | None) -> Tail:
    """The newest batch, found from the head and then past it (a crash may have left the head one behind)."""
    head = _read_head(records, operation_id)
    after = head[0] if head else 0
    newest = after
    for sequence, _key in _batch_keys(records, operation_id, after):
        newest = sequence
    if newest == 0:
        return Tail(0, GENESIS, frozenset())
    batch = read_batch(records, operation_id, newest)
    return Tail(newest, batch.digest, frozenset(e.id for e in batch.events))


def append_batch(records: OperationStore, operation_id: str | None, events: Sequence[AuditEvent]) -> Batch | None:
    """Append ``events`` as the next batch and move the head; the caller must hold the log's lock.

    Events whose id is already in the newest batch are dropped (a redelivery after a crash between the S3 write
    and the acknowledgement), as are duplicates within ``events``. Returns None when nothing was left to write.
    """
    tail = read_tail(records, operation_id)
    fresh: list[AuditEvent] = []
    seen = set(tail.event_ids)
    for event in events:
        if event.id not in seen:
            seen.add(event.id)
            fresh.append(event)
    if not fresh:
        return None
    sequence = tail.sequence + 1
    plaintext = encode_batch(sequence, tail.digest, fresh)
    records.put_sealed(batch_key(operation_id, sequence), plaintext)
    batch = Batch(sequence, tail.digest, tuple(fresh), digest(plaintext))
    head = json.dumps({"v": FORMAT_VERSION, "sequence": sequence, "sha256": batch.digest}).encode()
    records.put_sealed(head_key(operation_id), head)
    return batch


# --- reading (the API) ------------------------------------------------------------------------------------


def iter_batches(records: OperationStore, operation_id: str | None, *, after: int = 0) -> Iterator[Batch]:
    """Batches after sequence ``after``, oldest first, streamed one object at a time."""
    for sequence, _key in _batch_keys(records, operation_id, after):
        yield read_batch(records, operation_id, sequence)


def read_page(
    records: OperationStore, operation_id: str | None, *, after: int = 0, max_events: int = 500
) -> tuple[list[AuditEvent], int | None]:
    """Events of whole batches after sequence ``after`` (at least one batch, then up to ``max_events``).

    Returns the events and the cursor (a batch sequence) for the next page, ``None`` at the end.
    """
    events: list[AuditEvent] = []
    last = after
    for batch in iter_batches(records, operation_id, after=after):
        if events and len(events) + len(batch.events) > max_events:
            return events, last
        events.extend(batch.events)
        last = batch.sequence
    return events, None


@dataclass(frozen=True)
class Page:
    """One page of a log as the API serves it: the events of whole batches, the cursor of the next page (a batch
    sequence, ``None`` at the end), and the chain problems found in what this page covered."""

    events: list[AuditEvent]
    next_after: int | None
    batches: int
    problems: list[str]

    @property
    def chain_valid(self) -> bool:
        return not self.problems


def read_verified_page(
    records: OperationStore, operation_id: str | None, *, after: int = 0, max_events: int = 500
) -> Page:
    """Like ``read_page``, and verifies the chain as it goes, so a reader never reads a batch twice or holds more
    than one page.

    The page's batches must be contiguous after ``after`` and each must chain to the one before it, starting from
    batch ``after`` itself (read once more as the anchor; genesis for the first page). The last page also checks
    the head, so a removed tail is reported. A reader that follows ``next_after`` from the start and sees no
    problem on any page has verified the whole log, at the cost of one ``verify_chain``. ``ValidationFailed``
    (``cursor_invalid``) when ``after`` names no batch this log ever had.
    """
    problems: list[str] = []
    prev = _anchor_digest(records, operation_id, after, problems)
    digests: dict[int, str] = {after: prev} if prev else {}
    events: list[AuditEvent] = []
    expected, last, next_after, batches = after + 1, after, None, 0
    for sequence, _key in _batch_keys(records, operation_id, after):
        try:
            batch = read_batch(records, operation_id, sequence)
        except StrongroomError as exc:
            batch = None
            problems.append(f"batch {sequence} does not verify ({exc.detail})")
        if batch is not None and events and len(events) + len(batch.events) > max_events:
            next_after = last
            break
        if sequence != expected:
            problems.append(f"batch {expected} is missing (next stored is {sequence})")
        if batch is None:
            expected, last, prev = sequence + 1, sequence, ""
            continue
        if prev and not hmac.compare_digest(batch.prev, prev):
            problems.append(f"batch {sequence} does not chain to batch {sequence - 1} (edited or inserted)")
        events.extend(batch.events)
        batches += 1
        digests[sequence] = batch.digest
        expected, last, prev = sequence + 1, sequence, batch.digest
    if next_after is None:
        report = ChainReport(log=log_name(operation_id))
        _check_head(records, operation_id, report, last, digests)
        problems += report.problems
    return Page(events, next_after, batches, problems)


def _anchor_digest(records: OperationStore, operation_id: str | None, after: int, problems: list[str]) -> str:
    """Digest of batch ``after`` (what the next batch must name as ``prev``); ``""`` when it cannot be known."""
    if after == 0:
        return GENESIS
    try:
        return read_batch(records, operation_id, after).digest
    except NotFound:
        try:
            head = _read_head(records, operation_id)
        except StrongroomError:
            head = None
        if head is None or head[0] < after:
            raise ValidationFailed("after is not a cursor of this log", code="cursor_invalid") from None
        problems.append(f"batch {after} is missing")
    except StrongroomError as exc:
        problems.append(f"batch {after} does not verify ({exc.detail})")
    return ""


# --- verification -----------------------------------------------------------------------------------------


def verify_chain(records: OperationStore, operation_id: str | None) -> ChainReport:
    """Check every batch of a log: it opens under its own key, numbers are contiguous from 1, each ``prev`` is the
    digest of the batch before, and the head names the last batch. Never raises for a broken chain: it reports.
    """
    report = ChainReport(log=log_name(operation_id))
    expected, prev = 1, GENESIS
    digests: dict[int, str] = {}
    for sequence, _key in _batch_keys(records, operation_id):
        if sequence != expected:
            report.problems.append(
                f"batch {expected} is missing (next stored is {sequence})"
                if sequence > expected
                else f"batch {sequence} is out of order"
            )
        try:
            batch = read_batch(records, operation_id, sequence)
        except StrongroomError as exc:
            report.problems.append(f"batch {sequence} does not verify ({exc.detail})")
            expected, prev = sequence + 1, ""
            continue
        if prev and not hmac.compare_digest(batch.prev, prev):
            report.problems.append(f"batch {sequence} does not chain to batch {sequence - 1} (edited or inserted)")
        report.batches += 1
        report.events += len(batch.events)
        digests[sequence] = batch.digest
        expected, prev = sequence + 1, batch.digest
    _check_head(records, operation_id, report, expected - 1, digests)
    return report


def _check_head(
    records: OperationStore, operation_id: str | None, report: ChainReport, last: int, digests: dict[int, str]
) -> None:
    try:
        head = _read_head(records, operation_id)
    except StrongroomError as exc:
        report.problems.append(f"head does not verify ({exc.detail})")
        return
    if head is None:
        if last:
            report.problems.append("head is missing while batches exist")
        return
    report.head_sequence, head_digest = head
    if head[0] > last:
        report.problems.append(f"batches {last + 1}..{head[0]} named by the head are missing (tail removed)")
    elif head[0] in digests and not hmac.compare_digest(digests[head[0]], head_digest):
        report.problems.append(f"batch {head[0]} differs from the digest in the head")
    elif head[0] < last:
        report.warnings.append(
            f"head is {last - head[0]} batch(es) behind: an append was interrupted (the next append repairs it)"
        )
