"""Issue 10, item 9: the worker's work disk fills up while it prepares a run (a size-limited tmpfs).

Sealing no longer touches the disk (artifacts stream from ``out/`` to S3, issue 14), so the disk here is too small
for the run's input files: the worker's own write fails with ENOSPC, as any worker-side write would.

Wanted: a clear reason (``worker_disk_full``) instead of "internal error", a retry that another worker with room
can take, an alert from the resource monitor, nothing stored half, and no plaintext left on the full disk.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import FaultStack
from worker_service.pipeline.monitor import monitor_resources

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

TMPFS_SIZE = "256k"  # no room for the run's input
PADDING = base64.b64encode(os.urandom(600 * 1024)).decode()  # one input file, under the API's 1 MiB body limit


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "strongroom-faults", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_work_disk_is_reported_retried_elsewhere_and_leaves_nothing(stack: FaultStack, small_disk: Path) -> None:
    full = stack.start_worker(STRONGROOM_WORK_DIR=str(small_disk))
    operation_id = stack.create("sealed8", {"files": {"padding.bin": PADDING}})
    stack.wait_for(lambda: "worker_disk_full" in full.logs(), "the worker's disk-full alert")

    assert "internal error" not in full.logs()
    assert stack.get(operation_id).status in ("pending", "running")  # not failed: a retry is on its way
    assert monitor_resources(stack.services)["workers_disk_full"] >= 1  # the monitor's alert

    stack.start_worker()  # a worker with room (the full one stops; its retry goes back to the queue)
    # Checked once the full worker has stopped: before that, a retry may be running there again.
    assert list(small_disk.iterdir()) == [], "a run left its files on the full disk"
    final = stack.wait_finished(operation_id, timeout=120)

    assert final.status == "succeeded", final.result
    assert [a.size for a in final.artifacts.artifacts] == [8 << 20]
    stack.assert_clean(operation_id)
