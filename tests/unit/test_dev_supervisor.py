"""`strongroom dev` restarts a child that died, alone, with backoff, and gives up on one that cannot start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom.dev.servers import ManagedProcess, wait_for
from strongroom.dev.supervisor import BACKOFF, MAX_QUICK_RESTARTS, GaveUp, Supervisor

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    made: list[ManagedProcess] = []
    yield made
    for child in made:
        child.stop(1)


def test_a_killed_child_is_restarted_alone_after_a_delay(children: list[ManagedProcess], tmp_path: Path) -> None:
    worker = ManagedProcess(["sleep", "60"], log_path=tmp_path / "worker.log", name="worker")
    api = ManagedProcess(["sleep", "60"], log_path=tmp_path / "api.log", name="api")
    children += [worker, api]
    for child in children:
        child.start()
    said: list[str] = []
    clock = Clock()
    supervisor = Supervisor(children, say=said.append, clock=clock)
    supervisor.check()
    first_api, first_worker = api.pid, worker.pid

    worker.kill()
    supervisor.check()
    assert said == [f"strongroom dev: worker exited (code -9); restarting it in {BACKOFF[0]:g}s"]
    assert not worker.running()
    clock.now += BACKOFF[0]
    supervisor.check()

    assert worker.running() and worker.pid != first_worker
    assert api.pid == first_api  # the others never stopped


def test_a_child_that_keeps_dying_at_start_makes_dev_give_up(children: list[ManagedProcess], tmp_path: Path) -> None:
    broken = ManagedProcess(["sh", "-c", "exit 3"], log_path=tmp_path / "beat.log", name="beat")
    children.append(broken)
    broken.start()
    said: list[str] = []
    clock = Clock()
    supervisor = Supervisor(children, say=said.append, clock=clock)
    with pytest.raises(GaveUp):
        for _ in range(2 * MAX_QUICK_RESTARTS + 2):
            wait_for(lambda: not broken.running(), timeout=10, what="the broken child to exit")
            supervisor.check()  # schedules a restart (or gives up)
            clock.now += BACKOFF[-1]
            supervisor.check()  # restarts it
    assert len(said) == MAX_QUICK_RESTARTS
    assert said[1].endswith(f"restarting it in {BACKOFF[1]:g}s")  # backing off
