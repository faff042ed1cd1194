"""`strongroom dev`'s console while idle: periodic jobs that did nothing say nothing (DEBUG), each line names its
own process (beat's say beat), Celery's superuser warning is not printed (dev says once why instead), and neither
are the worker's and beat's start-up banners (one line a service)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from strongroom.client.identity import generate_identity
from strongroom.client.sdk import StrongroomClient
from strongroom.dev.servers import wait_for
from tests.e2e.devstack import Dev, clean_env
from tests.helpers.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

IDLE_WINDOW = 12.0  # seconds: two runs of the audit job at least (every 5 s)
# Fragments of Celery's banners: the worker's (config box, task list) and beat's ("is starting", configuration).
BANNERS = ("-------------- celery@", "[tasks]", ".> transport:", "celery beat v", "Configuration ->", ". scheduler ->")
ROUTINE = re.compile(r"persist_audit_events|job\.done|job\.skipped|Sending due task|received|succeeded in")


def test_an_idle_dev_console_is_quiet_and_names_each_process(tmp_path: Path) -> None:
    dev = Dev(tmp_path / ".strongroom", free_port(), tmp_path / "console.log", env=clean_env(), cwd=tmp_path)
    try:
        dev.start()
        ready_at = len(dev.process.logs())
        time.sleep(IDLE_WINDOW)
        idle = dev.process.logs()[ready_at:]
        noisy = [line for line in idle.splitlines() if ROUTINE.search(line)]
        assert noisy == [], "idle periodic jobs logged:\n" + "\n".join(noisy)

        # The jobs do run: once there is something to persist, the audit job says so, as the worker.
        with StrongroomClient(dev.url, generate_identity()) as client:
            client.create("privacy-audit", {"text": "nothing to see"})
        busy = re.compile(r"\[info\s*\] job\.done .*job=persist_audit_events")
        wait_for(lambda: busy.search(dev.process.logs()) is not None, timeout=60, what="a persist_audit_events run")
        (line,) = [line for line in dev.process.logs().splitlines() if busy.search(line)][:1]
        assert "process=worker" in line

        console = dev.process.logs()
        assert [b for b in BANNERS if b in console] == [], console
        assert re.search(r"celery@\S+ ready\.", console)  # the worker's own log line still says it is up
        assert "SecurityWarning" not in console and "superuser privileges" not in console
        if os.geteuid() == 0:
            assert "superuser warning is silenced" in console  # said once, by dev
        beat_lines = [line for line in console.splitlines() if "[celery.beat]" in line]
        assert beat_lines and all("process=beat" in line for line in beat_lines)
        dev.interrupt()
    finally:
        dev.process.stop()
