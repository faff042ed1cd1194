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

The head is also kept outside the S3 prefix (the ``anchor``, in Redis: ``read_anchor``/``write_anchor``), so
whoever can only delete objects cannot make the log forget its tail: an append that finds the head missing, or
older than the anchor, or batches missing that either names, never carries on as if nothing happened. It writes
an ``access_log.gap`` event saying what it found, first in the new batch, and never reuses a sequence number;
``verify_chain`` and ``read_verified_page`` report such an event as a problem for good.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from shared import layout
from shared.errors import IntegrityError, NotFound, StrongroomError, ValidationFailed
from shared.events import new_event
from shared.models import AuditEvent
from shared.records import OperationStore

FORMAT_VERSION = 1
GENESIS = "0" * 64
GAP_ACTION = "access_log.gap"
_BATCH_NAME = re.compile(r"(\d{12})\.json")
_ANCHOR = re.compile(r"([0-9]{1,18}):([0-9a-f]{64})")


@dataclass(frozen=True)
class Batch:
    sequence: int
    prev: str
    events: tuple[AuditEvent, ...]
    digest: str  # SHA-256 hex of the stored plaintext: the next batch's ``prev``
    plaintext: bytes = field(default=b"", repr=False, compare=False)  # the bytes ``digest`` covers


@dataclass(frozen=True)
class Head:
    """A log's newest batch as someone recorded it: ``head.json`` in S3, or the anchor outside S3."""

    sequence: int
    digest: str


@dataclass(frozen=True)
class Tail:
    """Where the next batch goes: its sequence is ``sequence + 1`` and its ``prev`` is ``digest``.

    ``gap`` says what was found wrong with the log (missing batches, a missing head...), ``None`` when it is whole.
    """

    sequence: int
    digest: str
    event_ids: frozenset[str]  # ids in the newest batch, to drop a redelivered event
    gap: str | None = None


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
    return Batch(sequence, prev, events, digest(plaintext), plaintext)


def _read_head(records: OperationStore, operation_id: str | None) -> Head | None:
    try:
        doc = json.loads(records.get_sealed(head_key(operation_id)))
    except NotFound:
        return None
    except ValueError:
        raise IntegrityError("access log head is malformed") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sequence"), int) or not isinstance(doc.get("sha256"), str):
        raise IntegrityError("access log head is malformed")
    return Head(doc["sequence"], doc["sha256"])


# --- the anchor: the head kept outside S3 -------------------------------------------------------------------


def read_anchor(client: redis.Redis, operation_id: str | None) -> Head | None:
    """The newest batch the appender recorded in Redis for this log; ``None`` if Redis has none (never written,
    or Redis lost it: Redis is not durable here, so a missing anchor only means less is known, never tampering)."""
    return parse_anchor(client.get(anchor_key(operation_id)))


def anchor_key(operation_id: str | None) -> str:
    return layout.redis_audit_head(log_name(operation_id))


def parse_anchor(raw: object) -> Head | None:
    """The Redis value ``"<sequence>:<sha256 hex>"``; anything else counts as no anchor."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    match = _ANCHOR.fullmatch(text) if isinstance(text, str) else None
    return Head(int(match.group(1)), match.group(2)) if match else None


def write_anchor(client: redis.Redis, operation_id: str | None, head: Head, *, ttl: int | None = None) -> None:
    """Record ``head`` as the log's newest batch (after ``head.json``); ``ttl`` seconds for an operation's log,
    which is deleted with its operation (retention also deletes the anchor; the TTL is the backstop)."""
    client.set(anchor_key(operation_id), f"{head.sequence}:{head.digest}", ex=ttl)


def delete_anchor(client: redis.Redis, operation_id: str | None) -> None:
    client.delete(anchor_key(operation_id))


def read_batch(records: OperationStore, operation_id: str | None, sequence: int) -> Batch:
    """One batch, opened and parsed; its embedded sequence must match its key."""
    batch = decode_batch(records.get_sealed(batch_key(operation_id, sequence)))
    if batch.sequence != sequence:
        raise IntegrityError(f"access log batch {sequence} claims sequence {batch.sequence}")
    return batch


# --- appending (the worker, under the log's lock) ----------------------------------------------------------


def read_tail(records: OperationStore, operation_id: str | None, anchor: Head | None = None) -> Tail:
    """The newest batch, and whether the log is whole up to it.

    The newest batch *known* is the later of ``head.json`` and ``anchor`` (the head kept outside S3). If it is
    still there with its digest, the tail is the newest stored batch (a crash may have left the head one behind).
    Otherwise the log lost something and ``gap`` says what: batches the head or anchor names are missing (the
    tail continues after the newest known batch, so no sequence is reused), that batch differs from its recorded
    digest, or ``head.json`` is missing or does not open while batches exist.
    """
    gap: list[str] = []
    try:
        head = _read_head(records, operation_id)
    except StrongroomError as exc:
        head = None
        gap.append(f"head.json does not verify ({exc.detail})")
    # The later of the two; the one outside S3 when they name the same batch (S3 is what an attacker can write).
    known = max((h for h in (anchor, head) if h is not None), key=lambda h: h.sequence, default=None)
    source = "the head kept outside S3" if known is not None and known is anchor else "head.json"
    newest = _newest_stored(records, operation_id, after=known.sequence - 1 if known and known.sequence > 1 else 0)
    if known is not None and (newest is None or newest < known.sequence):
        newest = _newest_stored(records, operation_id, after=0)  # the whole listing, only for an honest message
        first_missing = (newest or 0) + 1
        gap.append(f"batches {first_missing}..{known.sequence} named by {source} are missing (tail removed)")
        return Tail(known.sequence, known.digest, frozenset(), "; ".join(gap))
    if head is not None and anchor is not None and head.sequence < anchor.sequence:
        gap.append(f"head.json names batch {head.sequence}, older than batch {anchor.sequence} kept outside S3")
    if known is None and newest is not None and newest > 1 and not gap:
        gap.append(f"head.json is missing while batches up to {newest} exist: later ones may have been removed")
    elif head is None and known is not None and not gap:
        gap.append(f"head.json is missing (the head kept outside S3 names batch {known.sequence}, still there)")
    if newest is None:
        return Tail(0, GENESIS, frozenset(), "; ".join(gap) or None)
    if known is not None and known.sequence != newest:
        try:
            recorded = read_batch(records, operation_id, known.sequence).digest
        except StrongroomError as exc:
            gap.append(f"batch {known.sequence} named by {source} does not verify ({exc.detail})")
            recorded = known.digest
        if not hmac.compare_digest(recorded, known.digest):
            gap.append(f"batch {known.sequence} differs from the digest recorded in {source}")
    try:
        batch = read_batch(records, operation_id, newest)
    except NotFound:
        raise
    except StrongroomError as exc:
        # An object nobody with the keyring wrote (or a damaged one) must not stop the log for good: record it and
        # continue after it. What the next batch names as ``prev`` cannot be checked across it either way.
        gap.append(f"batch {newest} does not verify ({exc.detail})")
        fallback = known.digest if known is not None and known.sequence == newest else GENESIS
        return Tail(newest, fallback, frozenset(), "; ".join(gap))
    if known is not None and known.sequence == newest and not hmac.compare_digest(batch.digest, known.digest):
        gap.append(f"batch {newest} differs from the digest recorded in {source}")
    return Tail(newest, batch.digest, frozenset(e.id for e in batch.events), "; ".join(gap) or None)


def _newest_stored(records: OperationStore, operation_id: str | None, *, after: int) -> int | None:
    newest = None
    for sequence, _key in _batch_keys(records, operation_id, after):
        newest = sequence
    return newest


def append_batch(
    records: OperationStore, operation_id: str | None, events: Sequence[AuditEvent], *, anchor: Head | None = None
) -> Batch | None:
    """Append ``events`` as the next batch and move the head; the caller must hold the log's lock.

    ``anchor`` is the head kept outside S3 (``read_anchor``); the caller records the returned batch there
    (``write_anchor``) once this returns. When the log is not whole (``Tail.gap``) the batch starts with an
    ``access_log.gap`` event saying what was found. Events whose id is already in the newest batch are dropped (a
    redelivery after a crash between the S3 write and the acknowledgement), as are duplicates within ``events``.
    Returns None when nothing was left to write. The batch is written only if its key is free (``If-None-Match``):
    ``Conflict`` (``object_exists``) if another writer got there, never an overwritten batch.
    """
    tail = read_tail(records, operation_id, anchor)
    fresh: list[AuditEvent] = []
    seen = set(tail.event_ids)
    for event in events:
        if event.id not in seen:
            seen.add(event.id)
            fresh.append(event)
    if not fresh:
        return None
    if tail.gap is not None:
        marker = new_event(operation_id=operation_id, action=GAP_ACTION, result="error", reason=tail.gap)
        fresh.insert(0, marker)
    sequence = tail.sequence + 1
    plaintext = encode_batch(sequence, tail.digest, fresh)
    records.put_sealed(batch_key(operation_id, sequence), plaintext, if_absent=True)
    batch = Batch(sequence, tail.digest, tuple(fresh), digest(plaintext), plaintext)
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
    sequence, ``None`` at the end), and the chain problems found in what this page covered.

    ``chain`` holds the page's batches that opened, with the plaintext their digests cover, and ``head`` the log's
    ``head.json`` as read before the listing (``None`` if missing or unreadable): what a client needs to recompute
    the chain itself (the browser page does, see docs/audit-log.md).
    """

    events: list[AuditEvent]
    next_after: int | None
    batches: int
    problems: list[str]
    chain: list[Batch] = field(default_factory=list)
    head: Head | None = None

    @property
    def chain_valid(self) -> bool:
        return not self.problems


def read_verified_page(
    records: OperationStore,
    operation_id: str | None,
    *,
    after: int = 0,
    max_events: int = 500,
    max_bytes: int = 1 << 20,
    anchor: Head | None = None,
) -> Page:
    """Like ``read_page``, and verifies the chain as it goes, so a reader never reads a batch twice or holds more
    than one page. A page ends before the batch that would take it over ``max_events`` events or ``max_bytes``
    bytes of batch plaintext (it always holds at least one batch).

    The page's batches must be contiguous after ``after`` and each must chain to the one before it, starting from
    batch ``after`` itself (read once more; genesis for the first page); a batch holding an ``access_log.gap``
    event (damage the appender found) is a problem too. The last page also checks the head and ``anchor`` (the head
    kept outside S3, read *before* this call: it is written last, so it never names a batch a later listing
    cannot see), so a removed tail is reported. A reader that follows ``next_after`` from the start and sees no
    problem on any page has verified the whole log, at the cost of one ``verify_chain``. ``ValidationFailed``
    (``cursor_invalid``) when ``after`` names no batch this log ever had.
    """
    problems: list[str] = []
    head, head_error = _read_head_checked(records, operation_id)  # before the listing, for the same reason
    prev = _cursor_digest(records, operation_id, after, problems, head, anchor)
    digests: dict[int, str] = {after: prev} if prev else {}
    events: list[AuditEvent] = []
    chain: list[Batch] = []
    size = 0
    expected, last, next_after, batches = after + 1, after, None, 0
    for sequence, _key in _batch_keys(records, operation_id, after):
        try:
            batch = read_batch(records, operation_id, sequence)
        except StrongroomError as exc:
            batch = None
            problems.append(f"batch {sequence} does not verify ({exc.detail})")
        if (
            batch is not None
            and chain
            and (len(events) + len(batch.events) > max_events or size + len(batch.plaintext) > max_bytes)
        ):
            next_after = last
            break
        if sequence != expected:
            problems.append(f"batch {expected} is missing (next stored is {sequence})")
            prev = ""  # what batch ``sequence`` chains to is gone: the gap is the problem, not the link
        if batch is None:
            expected, last, prev = sequence + 1, sequence, ""
            continue
        if prev and not hmac.compare_digest(batch.prev, prev):
            problems.append(f"batch {sequence} does not chain to batch {sequence - 1} (edited or inserted)")
        problems += _recorded_gaps(batch)
        events.extend(batch.events)
        chain.append(batch)
        size += len(batch.plaintext)
        batches += 1
        digests[sequence] = batch.digest
        expected, last, prev = sequence + 1, sequence, batch.digest
    if next_after is None:
        report = ChainReport(log=log_name(operation_id))
        _check_head(report, last, digests, head, head_error, anchor)
        problems += report.problems
    return Page(events, next_after, batches, problems, chain, head)


def _cursor_digest(
    records: OperationStore,
    operation_id: str | None,
    after: int,
    problems: list[str],
    head: Head | None,
    anchor: Head | None,
) -> str:
    """Digest of batch ``after`` (what the next batch must name as ``prev``); ``""`` when it cannot be known."""
    if after == 0:
        return GENESIS
    try:
        return read_batch(records, operation_id, after).digest
    except NotFound:
        newest_known = max((h.sequence for h in (head, anchor) if h is not None), default=0)
        if newest_known < after:
            raise ValidationFailed("after is not a cursor of this log", code="cursor_invalid") from None
        problems.append(f"batch {after} is missing")
    except StrongroomError as exc:
        problems.append(f"batch {after} does not verify ({exc.detail})")
    return ""


def _recorded_gaps(batch: Batch) -> list[str]:
    """Damage the appender found and wrote into the log (``access_log.gap`` events): a problem for good."""
    return [
        f"batch {batch.sequence} records that the log was damaged before it: {event.reason or 'no detail'}"
        for event in batch.events
        if event.action == GAP_ACTION
    ]


# --- verification -----------------------------------------------------------------------------------------


def verify_chain(records: OperationStore, operation_id: str | None, *, anchor: Head | None = None) -> ChainReport:
    """Check every batch of a log: it opens under its own key, numbers are contiguous from 1, each ``prev`` is the
    digest of the batch before, no batch records a gap, and the head (and ``anchor``, the head kept outside S3,
    read before this call) names the last batch. Never raises for a broken chain: it reports.
    """
    report = ChainReport(log=log_name(operation_id))
    head, head_error = _read_head_checked(records, operation_id)  # before the listing: see read_verified_page
    expected, prev = 1, GENESIS
    digests: dict[int, str] = {}
    for sequence, _key in _batch_keys(records, operation_id):
        if sequence != expected:
            report.problems.append(
                f"batch {expected} is missing (next stored is {sequence})"
                if sequence > expected
                else f"batch {sequence} is out of order"
            )
            prev = ""  # the gap is the problem, not the link to the batch that is gone
        try:
            batch = read_batch(records, operation_id, sequence)
        except StrongroomError as exc:
            report.problems.append(f"batch {sequence} does not verify ({exc.detail})")
            expected, prev = sequence + 1, ""
            continue
        if prev and not hmac.compare_digest(batch.prev, prev):
            report.problems.append(f"batch {sequence} does not chain to batch {sequence - 1} (edited or inserted)")
        report.problems += _recorded_gaps(batch)
        report.batches += 1
        report.events += len(batch.events)
        digests[sequence] = batch.digest
        expected, prev = sequence + 1, batch.digest
    _check_head(report, expected - 1, digests, head, head_error, anchor)
    return report


def _read_head_checked(records: OperationStore, operation_id: str | None) -> tuple[Head | None, str | None]:
    """The head, or ``None`` and why it does not open."""
    try:
        return _read_head(records, operation_id), None
    except StrongroomError as exc:
        return None, f"head does not verify ({exc.detail})"


def _check_head(
    report: ChainReport,
    last: int,
    digests: dict[int, str],
    head: Head | None,
    head_error: str | None,
    anchor: Head | None,
) -> None:
    if anchor is not None:
        _check_anchor(report, last, digests, head, anchor)
    if head_error is not None:
        report.problems.append(head_error)
        return
    if head is None:
        if last:
            report.problems.append("head is missing while batches exist")
        return
    report.head_sequence = head.sequence
    if head.sequence > last:
        report.problems.append(f"batches {last + 1}..{head.sequence} named by the head are missing (tail removed)")
    elif head.sequence in digests and not hmac.compare_digest(digests[head.sequence], head.digest):
        report.problems.append(f"batch {head.sequence} differs from the digest in the head")
    elif head.sequence < last:
        report.warnings.append(
            f"head is {last - head.sequence} batch(es) behind: an append was interrupted (the next append repairs it)"
        )


def _check_anchor(report: ChainReport, last: int, digests: dict[int, str], head: Head | None, anchor: Head) -> None:
    """The head kept outside S3 is written after head.json: a head.json older than it was rolled back, and a batch
    it names must still be there with its digest."""
    if anchor.sequence > last and (head is None or head.sequence < anchor.sequence):  # else the head says it
        report.problems.append(
            f"batches {last + 1}..{anchor.sequence} named by the head kept outside S3 are missing (tail removed)"
        )
    elif anchor.sequence in digests and not hmac.compare_digest(digests[anchor.sequence], anchor.digest):
        report.problems.append(f"batch {anchor.sequence} differs from the digest in the head kept outside S3")
    if head is not None and head.sequence < anchor.sequence:
        report.problems.append(
            f"head.json names batch {head.sequence}, older than batch {anchor.sequence} kept outside S3 (rolled back)"
        )
