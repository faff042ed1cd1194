"""The access-log vectors the page's chain verifier is tested against (tests/js/auditchain.test.mjs) are what
the Python implementation makes today: a change to the batch format or the API's page cannot leave them stale."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from shared import audit_log
from tests.helpers import auditchain_vectors

pytestmark = pytest.mark.unit


def test_the_checked_in_vectors_are_what_shared_audit_log_makes() -> None:
    assert auditchain_vectors.PATH.read_text(encoding="utf-8") == auditchain_vectors.render(), (
        "regenerate: .venv/bin/python -m tests.helpers.auditchain_vectors"
    )


def test_the_honest_vector_spans_pages_and_its_bytes_are_the_events() -> None:
    case = json.loads(auditchain_vectors.PATH.read_text(encoding="utf-8"))["cases"]["honest"]
    pages = case["pages"]
    assert len(pages) >= 2 and all(len(p["chain"]["batches"]) >= 2 for p in pages)
    prev = audit_log.GENESIS
    for page in pages:
        decoded = []
        for served in page["chain"]["batches"]:
            plaintext = base64.b64decode(served["plaintext"], validate=True)
            assert hashlib.sha256(plaintext).hexdigest() == served["digest"] and served["prev"] == prev
            batch = audit_log.decode_batch(plaintext)
            assert (batch.sequence, batch.prev) == (served["sequence"], prev)
            decoded += [e.model_dump(mode="json") for e in batch.events]
            prev = served["digest"]
        assert decoded == page["events"]
    assert pages[-1]["chain"]["head"] == {"sequence": 4, "digest": prev}
    plaintexts = [base64.b64decode(b["plaintext"]) for p in pages for b in p["chain"]["batches"]]
    assert any(not plaintext.isascii() for plaintext in plaintexts)  # UTF-8 bytes, not \u escapes
