"""Two beats at once (a deployment mistake, or a rolling restart): every periodic job still runs under its lock,
so the access log gets each event exactly once and its chain verifies, and the operation is unharmed."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.faults.stack import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

WANTED = {"operation.create", "operation.started", "operation.finished", "artifact.stored"}


def test_two_beats_persist_each_audit_event_once(stack: FaultStack) -> None:
    stack.start_beat()
    stack.start_beat()
    operation_id = stack.create("files")
    assert stack.wait_finished(operation_id).status == "succeeded"

    deadline = time.monotonic() + 60
    while True:
        with stack.client() as client:
            log = client.access_log(operation_id)
        actions = Counter(event.get("action") for event in log.events)
        if set(actions) >= WANTED:
            break
        assert time.monotonic() < deadline, f"the access log never got {sorted(WANTED - set(actions))}"
        time.sleep(0.5)

    ids = [event.get("id") for event in log.events]
    assert len(ids) == len(set(ids)), "an audit event was persisted twice"
    assert actions["artifact.stored"] == 3  # the "files" agent's three files, each once
    assert log.chain_verified is not False
    stack.stop_beats()
    stack.assert_clean(operation_id)
