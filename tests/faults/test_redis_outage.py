"""Issue 10, item 2: Valkey killed with SIGKILL while a run is under way, back after a while.

Celery 5.7.0's consumer closed the broken broker connection in a way that made kombu's ``restore_unacked`` crash
(``'NoneType' object has no attribute 'hostname'``) and the worker exit; and a run whose lease lapsed during a
long outage could not publish its retry while Redis was still down, so the message was dropped and the
operation stayed ``running``. The worker must ride an outage out and finish (or re-run) the operation alone.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.stack import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

LONG_OUTAGE = 60.0  # seconds: past the run lease's TTL, so the run is stopped and must be re-run by itself


def outage_during_run(stack: FaultStack, outage: float, agent_seconds: float) -> str:
    """Start an ``until`` run, SIGKILL Valkey once it runs, bring it back after ``outage`` seconds."""
    operation_id = stack.create("until", {"prompt": str(time.time() + agent_seconds)})
    stack.wait_status(operation_id, {"running"}, timeout=60)
    stack.valkey.kill()
    time.sleep(outage)
    stack.valkey.start()
    return operation_id


def test_a_long_valkey_outage_mid_run_ends_succeeded(stack: FaultStack) -> None:
    operation_id = outage_during_run(stack, LONG_OUTAGE, agent_seconds=10)

    final = stack.wait_finished(operation_id, timeout=150)

    assert final.status == "succeeded", final.result
    assert [a.name for a in final.artifacts.artifacts] == ["done.txt"]
    assert stack.worker is not None and stack.worker.running(), "the worker exited"
    assert "Unrecoverable error" not in stack.worker.logs()
    stack.assert_clean(operation_id)


def test_a_short_valkey_blip_mid_run_is_ridden_out(stack: FaultStack) -> None:
    """Shorter than the lease TTL: the same run goes on and finishes; the worker stays up."""
    operation_id = outage_during_run(stack, 5, agent_seconds=12)

    final = stack.wait_finished(operation_id, timeout=120)

    assert final.status == "succeeded", final.result
    assert stack.worker is not None and stack.worker.running(), "the worker exited"
    assert "Unrecoverable error" not in stack.worker.logs()
    stack.assert_clean(operation_id)
