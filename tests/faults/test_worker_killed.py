"""The worker killed with SIGKILL while it stores a run's artifacts: nothing becomes half-visible, the monitor's
redelivery re-runs the operation on a restarted worker, and after the sweep only what the record names is left."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared import layout
from tests.agents.harness import producer, stored_keys
from tests.faults.stack import FaultStack
from worker_service.pipeline.monitor import REDELIVER_AFTER, monitor_resources

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def test_worker_killed_mid_store_is_rerun_and_leaves_nothing_half(stack: FaultStack) -> None:
    operation_id = stack.create("bulk")
    stack.wait_for(lambda: stored_keys(stack.services, operation_id) != [], "the first upload", timeout=90)
    assert stack.worker is not None
    stack.worker.kill()  # SIGKILL to its whole process group, mid-store
    stack.worker = None
    killed_runs = stack.run_dirs()
    assert killed_runs != [], "the killed run left no run directory: nothing to prove about item 4"

    served = stack.get(operation_id)
    assert served.status == "running" and served.artifacts.count == 0  # uploads exist, none is visible

    stack.start_worker()
    assert not set(killed_runs) & set(stack.run_dirs()), "the killed run's plaintext outlived the next start"
    lease = layout.redis_run_lease(operation_id)
    stack.wait_for(lambda: not stack.services.redis.exists(lease), "the dead run's lease to lapse", timeout=60)
    app = producer(stack.services.settings)
    beat_pass = replace(stack.services, send_task=lambda name, kwargs: app.send_task(name, kwargs=kwargs))
    later = datetime.now(UTC) + timedelta(seconds=REDELIVER_AFTER + 1)  # the monitor's next pass, as beat runs it
    assert operation_id in monitor_resources(beat_pass, now=later)["redelivered"]

    final = stack.wait_finished(operation_id, timeout=120)
    assert final.status == "succeeded", final.result
    assert final.artifacts.count == 8

    assert stack.run_dirs() == []  # the killed run's plaintext went when the next worker started (issue 10 item 4)
    stack.assert_clean(operation_id)  # everything else: S3, multipart uploads, processes
