"""Access-log vectors for the page's chain verifier (api_service/static/auditchain.js), made by the Python side.

Each case is a small operation log written with ``shared.audit_log`` into an in-memory store and served as the API
serves it (``read_verified_page`` + ``access_log_body``, a few pages each), with the verdict of Python's
``verify_chain`` on the same log. tests/js/auditchain.test.mjs checks the JavaScript verifier against them;
tests/unit/api/test_auditchain_vectors.py checks that the checked-in file is what this module makes today.

Regenerate after a format change: ``.venv/bin/python -m tests.helpers.auditchain_vectors``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from api_service.endpoints.operations import access_log_body
from shared import audit_log
from shared.crypto.keyring import Keyring
from shared.models import AuditEvent
from shared.records import OperationStore
from shared.storage.memory import MemoryObjectStore

PATH = Path(__file__).resolve().parents[1] / "js" / "vectors" / "auditchain.json"
OP = "privacy-audit_abcdefghijklmnopqrstuvwxyz"
START = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _event(n: int, action: str, **fields: Any) -> AuditEvent:
    return AuditEvent(
        id=f"{n:032x}",
        time=START + timedelta(seconds=n),
        operation_id=OP,
        actor="0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
        action=action,  # type: ignore[arg-type]
        **fields,
    )


def _store() -> OperationStore:
    return OperationStore(MemoryObjectStore(), Keyring.from_json(Keyring.generate_json("k1")))


def _append(records: OperationStore, events: list[AuditEvent]) -> audit_log.Head:
    batch = audit_log.append_batch(records, OP, events)
    assert batch is not None
    return audit_log.Head(batch.sequence, batch.digest)


def _honest(records: OperationStore) -> audit_log.Head:
    """Four batches: a create, reads, a download with a non-ASCII artifact name and reason, a denial."""
    _append(records, [_event(1, "operation.create", result="ok")])
    _append(records, [_event(2, "operation.read", result="allowed"), _event(3, "artifact.list", result="allowed")])
    _append(
        records,
        [
            _event(4, "artifact.url", result="allowed", artifact="Résumé (履歴書).txt"),
            _event(5, "artifact.download", result="allowed", artifact="Résumé (履歴書).txt"),
        ],
    )
    return _append(records, [_event(6, "artifact.url", result="denied", reason="grant ended — ask the operator")])


def _serve(records: OperationStore, anchor: audit_log.Head | None, max_events: int) -> list[dict[str, Any]]:
    pages, after = [], 0
    while True:
        page = audit_log.read_verified_page(records, OP, after=after, max_events=max_events, anchor=anchor)
        pages.append(access_log_body(page, anchor))
        if page.next_after is None:
            return pages
        after = page.next_after


def _case(records: OperationStore, anchor: audit_log.Head | None, max_events: int = 3) -> dict[str, Any]:
    report = audit_log.verify_chain(records, OP, anchor=anchor)
    return {
        "operation_id": OP,
        "python": {"ok": report.ok, "problems": report.problems, "warnings": report.warnings},
        "pages": _serve(records, anchor, max_events),
    }


def build() -> dict[str, Any]:
    cases: dict[str, Any] = {}

    records = _store()
    head = _honest(records)
    cases["honest"] = _case(records, head)

    records = _store()
    _honest(records)  # head.json rolled back one batch (an interrupted append): a warning, not a failure
    behind = audit_log.read_batch(records, OP, 3)
    head_doc = {"v": audit_log.FORMAT_VERSION, "sequence": 3, "sha256": behind.digest}
    records.put_sealed(audit_log.head_key(OP), json.dumps(head_doc).encode())
    cases["head_behind"] = _case(records, None)

    records = _store()  # the appender found damage and wrote it into the log: a problem for good
    _append(records, [_event(1, "operation.create", result="ok")])
    _append(
        records,
        [
            _event(2, audit_log.GAP_ACTION, result="error", reason="batches 2..3 named by head.json are missing"),
            _event(3, "operation.read", result="allowed"),
        ],
    )
    cases["recorded_gap"] = _case(records, None)

    cases["empty"] = _case(_store(), None)
    return {
        "about": "made by tests/helpers/auditchain_vectors.py from shared/audit_log.py; see docs/audit-log.md",
        "genesis": audit_log.GENESIS,
        "cases": cases,
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {PATH}")
